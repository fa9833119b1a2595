"""The fleet-wide gauges, reported by one process: depth, dwell (oldest entry age) and dead letters.

Every worker process runs a drainer, and each used to set the depth gauge with the buffer's
total: a dashboard that sums over processes showed N times the depth. Now the process that holds a
short Redis lease (``{p}:gauges:lease``, renewed on each report, taken over within
``lease_ms`` when its holder dies) reports them; the others report nothing: a process that finds
the lease held by another forgets its readings, and a reading not renewed stops being exported
(``telemetry.READING_TTL_MS``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from importlib import resources

from ..buffer import MollifierBuffer
from ..buffer.codec import boundary
from ..buffer.listing import ListingScripts, dwell_snapshot
from ..telemetry import Telemetry

__all__ = ["DWELL_INTERVAL_MS", "FLEET_LEASE_MS", "OLDEST_ENVS", "FleetGauges"]

logger = logging.getLogger(__name__)

#: How long the reporter's lease lasts unless renewed, in milliseconds.
FLEET_LEASE_MS = 5_000
#: How often the dwell gauges (which read each env's head) are recomputed, in milliseconds.
DWELL_INTERVAL_MS = 5_000
#: How many of the oldest envs get a ranked gauge (and a line in the ``mollifier.dwell`` log).
OLDEST_ENVS = 3
#: How often the ``mollifier.dwell`` log names the oldest envs, at most, in milliseconds.
DWELL_LOG_INTERVAL_MS = 60_000


class FleetGauges:
    """Reports the fleet's gauges from whichever process holds the lease.

    Parameters:
      buffer: The buffer to read.
      telemetry: Where the gauges go.
      lease_ms: The reporter's lease. Defaults to :data:`FLEET_LEASE_MS`.
      dwell_interval_ms: The least time between two dwell reads. Defaults to 5 s.
      clock: Monotonic seconds. Defaults to ``time.monotonic``.
      in_use: Reads the drain budget in use (``DrainPace.in_use``), reported with the rest; the
        other processes then no longer export their own view of it. Defaults to None.
    """

    def __init__(
        self,
        buffer: MollifierBuffer,
        telemetry: Telemetry,
        *,
        lease_ms: int = FLEET_LEASE_MS,
        dwell_interval_ms: int = DWELL_INTERVAL_MS,
        clock: Callable[[], float] = time.monotonic,
        in_use: Callable[[], int] | None = None,
    ) -> None:
        self._buffer = buffer
        self._in_use = in_use
        self._telemetry = telemetry
        self._lease_ms = lease_ms
        self._dwell_s = dwell_interval_ms / 1000
        self._clock = clock
        self.token = uuid.uuid4().hex
        source = resources.files(__package__).joinpath("lua/fleet_lease.lua").read_text(encoding="utf-8")
        self._lease = buffer.client.register_script(source)
        self._listing = ListingScripts(buffer.client)
        self._next_dwell = float("-inf")
        self._next_log = float("-inf")

    def report(self) -> bool:
        """Report the gauges if this process holds (or takes) the lease; whether it did.

        Never raises: a Redis error is logged at debug level and nothing is reported.
        """
        try:
            with boundary("fleet_gauges"):
                keys = self._buffer.keys
                if not int(self._lease(keys=[keys.gauges_lease], args=[self.token, self._lease_ms])):
                    self._telemetry.forget_fleet_gauges()  # it may have held the lease before
                    return False
                if self._in_use is not None:
                    self._telemetry.record_fleet_in_use(self._in_use())
                now = self._clock()
                if now < self._next_dwell:
                    self._telemetry.record_depth(self._buffer.depth())
                    return True
                self._next_dwell = now + self._dwell_s
                depth, oldest_ms, envs, dead_letters = dwell_snapshot(self._listing, keys, OLDEST_ENVS)
        except Exception:
            logger.debug("mollifier.drain_error reporting the fleet gauges", exc_info=True)
            return False
        self._telemetry.record_depth(depth)
        self._telemetry.record_dwell(oldest_ms, [age for _, _, age in envs], dead_letters)
        if envs and now >= self._next_log:
            self._next_log = now + DWELL_LOG_INTERVAL_MS / 1000
            logger.info(
                "mollifier.dwell oldest_age_ms=%d oldest envs: %s",
                oldest_ms,
                ", ".join(f"{org}/{env}={age}" for org, env, age in envs),
            )
        return True
