"""A drainer's housekeeping, throttled: reclaiming expired leases and reading the depth gauge.

An entry whose lease expired (its drainer died, stalled past its lease, or lost a pop's reply) goes
back to its queue; one whose lease keeps expiring (``max_expiries`` times: a reply too large to
read, a handler that never returns) is dead-lettered with ``LeaseExpired`` instead of looping.
An idle drainer reclaims less often (:data:`IDLE_HOUSEKEEPING_MS`) and reads the gauges every
:data:`IDLE_GAUGES_MS`: it then costs next to nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ..buffer import MollifierBuffer
from ..buffer.drain_protocol import DrainProtocol
from ..telemetry import DrainResultKind, Telemetry
from .leases import LeaseKeeper

__all__ = [
    "DEPTH_INTERVAL_MS",
    "IDLE_GAUGES_MS",
    "IDLE_HOUSEKEEPING_MS",
    "MAX_LEASE_EXPIRIES",
    "RECLAIM_INTERVAL_MS",
    "Housekeeping",
]

logger = logging.getLogger(__name__)

#: The most often a tick reclaims expired leases, in milliseconds (also capped at a quarter lease).
RECLAIM_INTERVAL_MS = 1_000
#: How often a tick reads the buffer depth for the gauge, in milliseconds.
DEPTH_INTERVAL_MS = 1_000
#: Lease expiries after which an entry is dead-lettered (``LeaseExpired``). Not
#: ``drain_max_attempts``: a lease expires when its drainer dies (a deploy's SIGKILL), which says
#: nothing about the message, so a few such deaths must not dead-letter what it held.
MAX_LEASE_EXPIRIES = 5
#: How often an idle drainer reclaims expired leases and reads the depth, in milliseconds.
IDLE_HOUSEKEEPING_MS = 15_000
#: How often an idle drainer reports the fleet's gauges: within the gauges' 5 s lease, so one
#: holder keeps it, and a depth that fell to 0 shows within seconds (15 s before).
IDLE_GAUGES_MS = 2_000


class Housekeeping:
    """Reclaims expired leases every ``reclaim_interval_ms`` and records the depth every second
    (every :data:`IDLE_HOUSEKEEPING_MS` and :data:`IDLE_GAUGES_MS` while idle).

    Parameters:
      protocol: The buffer's drain side.
      buffer: The buffer, for its depth.
      telemetry: Where the reclaimed, dead-lettered and depth figures go.
      reclaim_interval_ms: How often leases are reclaimed at most. Defaults to a quarter of the
        buffer's lease, at most :data:`RECLAIM_INTERVAL_MS`.
      max_expiries: Lease expiries after which an entry is dead-lettered; 0 for never. Defaults
        to :data:`MAX_LEASE_EXPIRIES`.
      leases: The drainer's own leases, renewed first when their last renewal failed: after an
        outage longer than the lease less its renewal interval, reclaiming first would requeue
        what the drainer still holds (delivered a second time).
      report_gauges: Reports the fleet's gauges instead of this process's depth (see
        :class:`~dramatiq_mollifier.drain.gauges.FleetGauges`). Defaults to None: the depth.
      give_back: Frees the drain budget slots of reclaimed entries. Defaults to None (no budget).
    """

    def __init__(
        self,
        protocol: DrainProtocol,
        buffer: MollifierBuffer,
        *,
        telemetry: Telemetry,
        reclaim_interval_ms: int | None = None,
        max_expiries: int = MAX_LEASE_EXPIRIES,
        leases: LeaseKeeper | None = None,
        report_gauges: Callable[[], object] | None = None,
        give_back: Callable[[Sequence[str]], object] | None = None,
    ) -> None:
        self._leases = leases
        if reclaim_interval_ms is None:
            reclaim_interval_ms = max(1, min(RECLAIM_INTERVAL_MS, buffer.lease_ms // 4))
        self._protocol = protocol
        self._buffer = buffer
        self._telemetry = telemetry
        self.reclaim_interval_ms = reclaim_interval_ms
        self.max_expiries = max_expiries
        self._report_gauges = report_gauges
        self._give_back = give_back
        self._last_reclaim = float("-inf")
        self._last_depth = float("-inf")

    def run(self, now: float, *, idle: bool) -> None:
        """Reclaim and read the depth if their time has come (``now``: monotonic seconds)."""
        if (now - self._last_reclaim) * 1000 >= (IDLE_HOUSEKEEPING_MS if idle else self.reclaim_interval_ms):
            self._last_reclaim = now
            self._reclaim()
        if (now - self._last_depth) * 1000 >= (IDLE_GAUGES_MS if idle else DEPTH_INTERVAL_MS):
            self._last_depth = now
            if self._report_gauges is not None:
                self._report_gauges()
                return
            try:
                self._telemetry.record_depth(self._buffer.depth())
            except Exception:
                logger.debug("mollifier.drain_error reading the depth", exc_info=True)

    def _reclaim(self) -> None:
        try:
            if self._leases is not None:
                self._leases.renew_if_failing()
            reclaimed, dead = self._protocol.reclaim(max_expiries=self.max_expiries)
        except Exception:
            logger.warning("mollifier.drain_error reclaiming expired leases", exc_info=True)
            return
        if self._give_back is not None and (reclaimed or dead):
            self._give_back([*reclaimed, *dead])
        if dead:
            self._telemetry.record_drained(DrainResultKind.FAILED, len(dead))
            logger.error(
                "mollifier.drain_failed %d entries dead-lettered (LeaseExpired): their lease expired "
                "%d times without a drainer settling them; first %r",
                len(dead),
                self.max_expiries,
                dead[0],
            )
        if reclaimed:
            self._telemetry.record_reclaimed(len(reclaimed))
            logger.warning(
                "mollifier.reclaimed %d entries whose lease expired, first %r", len(reclaimed), reclaimed[0]
            )
