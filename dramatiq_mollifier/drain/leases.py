"""The leases a drainer holds: renewed while their handlers run, given up once settled.

A pop leases its entries for ``drain_lease_ms`` under an owner token of its own. A batch handled
serially on one thread, a slow broker or a long retry delay can outlast that lease; without
renewal another drainer would reclaim the entries and deliver them a second time. A
:class:`LeaseKeeper` renews every lease its drainer still holds, every third of the lease, from a
thread of its own (so a tick blocked waiting on handlers, or a long GC pause short of the lease,
does not let them lapse). Renewal goes through the owner check: an entry whose lease passed to
another drainer meanwhile is not taken back, only reported. An entry held for more than
:data:`MAX_RENEWALS` leases (a handler that never returns) is renewed no more: its lease
expires, another drainer reclaims it, and one whose lease keeps expiring is dead-lettered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from ..buffer.drain_protocol import DrainProtocol
from ..models import BufferEntry

__all__ = ["MAX_RENEWALS", "LeaseKeeper"]

logger = logging.getLogger(__name__)

# Entries renewed per script call.
_RENEW_BATCH = 500
#: How many leases' worth an entry is held at most (renewed): 10 minutes with the default lease.
MAX_RENEWALS = 10


class LeaseKeeper:
    """The entries a drainer popped and has not settled yet, and the thread that renews them.

    Parameters:
      protocol: The buffer's drain side.
      interval_ms: How often leases are renewed. Defaults to a third of the buffer's lease.
    """

    def __init__(self, protocol: DrainProtocol, *, interval_ms: int | None = None) -> None:
        self._protocol = protocol
        self.interval_ms = interval_ms or max(1, protocol.lease_ms // 3)
        self._max_hold_s = MAX_RENEWALS * protocol.lease_ms / 1000
        # (id, owner) -> (the entry, when it was first held, monotonic seconds)
        self._held: dict[tuple[str, str | None], tuple[BufferEntry, float]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: When leases were last renewed without an error (monotonic seconds).
        self.renewed_at = float("-inf")
        # Whether the last renewal failed (Redis away): leases may lapse until one succeeds.
        self._failing = False

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, entries: Iterable[BufferEntry]) -> None:
        """Renew these popped entries' leases until :meth:`drop`."""
        now = time.monotonic()
        with self._lock:
            for entry in entries:
                self._held[entry.message_id, entry.lease_owner] = (entry, now)

    def drop(self, entries: Iterable[BufferEntry]) -> None:
        """Stop renewing these (settled, given back or given up)."""
        with self._lock:
            for entry in entries:
                self._held.pop((entry.message_id, entry.lease_owner), None)

    def renew(self) -> int:
        """Renew every lease held now; returns how many were renewed. Raises on a Redis error.

        An entry whose lease another drainer holds now is dropped and logged: its handler's
        outcome will be refused when it is settled.
        """
        too_old = time.monotonic() - self._max_hold_s
        with self._lock:
            entries = [entry for entry, since in self._held.values() if since > too_old]
            hung = [entry for entry, since in self._held.values() if since <= too_old]
        if hung:
            self.drop(hung)
            logger.warning(
                "mollifier.lease_lost %d entries held for %d leases are renewed no more (a handler "
                "that never returns?): they will be reclaimed, first %r",
                len(hung),
                MAX_RENEWALS,
                hung[0].message_id,
            )
        renewed = 0
        started = time.monotonic()
        for start in range(0, len(entries), _RENEW_BATCH):
            batch = entries[start : start + _RENEW_BATCH]
            try:
                lost = self._protocol.renew(batch)
            except Exception:
                self._failing = True
                raise
            renewed += len(batch) - len(lost)
            if lost:
                self.drop(lost)
                logger.warning(
                    "mollifier.lease_lost %d entries popped here are leased to another drainer now "
                    "(their lease expired before it was renewed), first %r",
                    len(lost),
                    lost[0].message_id,
                )
        self._failing = False
        self.renewed_at = started
        return renewed

    def renew_if_failing(self) -> None:
        """Renew at once if the last renewal failed (before reclaiming after an outage, so this
        drainer does not reclaim what it still holds). Raises on a Redis error.
        """
        if self._failing and self._held:
            self.renew()

    # The thread --------------------------------------------------------------------------------
    def start(self) -> None:
        """Renew in a background thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mollifier-lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (what is held stays held: a later :meth:`start` renews it again)."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            # Not longer: a renewal stuck on a stalled Redis ends with its socket timeout.
            thread.join(0.5)

    def _loop(self) -> None:
        stopping = self._stopping
        while not stopping.wait(self.interval_ms / 1000):
            if not self._held:
                continue
            try:
                self.renew()
            except Exception:
                logger.warning("mollifier.drain_error renewing leases", exc_info=True)
