"""Acking what the handlers delivered: in one call per batch, and again while the lease lasts.

An ack that fails (Redis unreachable, restarted) is kept and retried on the next loop iterations,
until one lease after the last lease renewal that worked, instead of being dropped: the entries
are not delivered a second time once Redis is back. An ack the buffer refuses (the lease passed to
another drainer meanwhile) is counted as ``drained{result=stale}``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

from ..buffer.drain_protocol import DrainProtocol
from ..models import BufferEntry
from ..settings import MollifierMode
from ..telemetry import DrainResultKind, Telemetry
from .leases import LeaseKeeper

__all__ = ["Acks"]

logger = logging.getLogger(__name__)


class Acks:
    """Acks successes and keeps those whose ack failed, to retry them within their lease."""

    def __init__(
        self,
        protocol: DrainProtocol,
        *,
        telemetry: Telemetry,
        leases: LeaseKeeper,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._buffer = protocol
        self._telemetry = telemetry
        self._leases = leases
        self._clock = clock
        # (give up at, entries): successes whose ack failed, retried until their lease is over.
        self._unacked: list[tuple[float, list[BufferEntry]]] = []

    def ack_or_keep(self, entries: list[BufferEntry]) -> int | None:
        """Ack ``entries``; how many were acked, or None when the ack failed (kept for retries)."""
        acked = self.ack(entries)
        if acked is None:
            self._unacked.append((self._clock() + self._buffer.lease_ms / 1000, entries))
        return acked

    def ack(self, entries: list[BufferEntry]) -> int | None:
        """Ack entries whose handler succeeded; how many were acked, None if the ack failed."""
        try:
            acked = self._buffer.ack_entries(entries)
        except Exception:
            logger.warning(
                "mollifier.drain_error acking %d entries (retried while their lease lasts)",
                len(entries),
                exc_info=True,
            )
            return None
        self._leases.drop(entries)
        refused = {id(entry) for entry in acked.refused}
        if refused:
            self.record_stale(acked.refused)
        done = [entry for entry in entries if id(entry) not in refused]
        if done:
            self.record_acked(done)
        return len(done)

    def retry(self, *, last_chance: bool = False) -> int:
        """Ack again the entries whose ack failed; how many were acked. Those whose lease is
        over (or all, on the ``last_chance``) are given up: they are delivered a second time.
        """
        pending, self._unacked = self._unacked, []
        acked = 0
        now = self._clock()
        # Their leases are renewed meanwhile: over one lease after the last renewal that worked.
        renewed_until = self._leases.renewed_at + self._buffer.lease_ms / 1000
        for give_up_at, entries in pending:
            done = self.ack(entries)
            if done is not None:
                acked += done
            elif last_chance or now >= max(give_up_at, renewed_until):
                self._leases.drop(entries)
                logger.warning(
                    "mollifier.drain_error gave up acking %d entries already on the broker, first "
                    "%r: they will be reclaimed and delivered again",
                    len(entries),
                    entries[0].message_id,
                )
            else:
                self._unacked.append((give_up_at, entries))
        return acked

    @property
    def pending(self) -> int:
        """Entries whose handler succeeded and whose ack is still to be retried."""
        return sum(len(entries) for _, entries in self._unacked)

    def record_stale(self, entries: Sequence[BufferEntry]) -> None:
        self._telemetry.record_drained(DrainResultKind.STALE, len(entries))
        logger.warning(
            "mollifier.stale_ack %d entries handled here were not acked: their lease had passed to "
            "another drainer, which may deliver them again; first %r",
            len(entries),
            entries[0].message_id,
        )

    def record_acked(self, entries: Sequence[BufferEntry]) -> None:
        self._telemetry.record_drained(DrainResultKind.ACKED, len(entries))
        now_ms = time.time() * 1000
        # The audit line: at INFO for a dual_write copy (operators join it with
        # mollifier.buffered before trusting divert), at DEBUG for a divert entry, the hot path
        # of a burst: one formatted line (and sha256) per message cost the worker process about
        # a tenth of a drained message's CPU, and Dramatiq's parent process as much again to
        # forward it. Enable DEBUG on this logger to audit divert too.
        audit = logger.isEnabledFor(logging.INFO)
        audit_divert = audit and logger.isEnabledFor(logging.DEBUG)
        for entry in entries:
            age_ms = max(0.0, now_ms - entry.created_at.timestamp() * 1000)
            self._telemetry.record_time_in_buffer(age_ms)
            divert = entry.mode == MollifierMode.DIVERT.value
            if audit and (audit_divert or not divert):
                logger.log(
                    logging.DEBUG if divert else logging.INFO,
                    "mollifier.drained message_id=%r org_id=%r env_id=%r attempts=%d age_ms=%d sha256=%s",
                    entry.message_id,
                    entry.org_id,
                    entry.env_id,
                    entry.attempts,
                    age_ms,
                    hashlib.sha256(entry.payload).hexdigest(),
                )
