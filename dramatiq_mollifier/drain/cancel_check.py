"""Cancel wins over a drain: right before the broker writes, the popped entries are committed.

An operator's cancel deletes a QUEUED or DRAINING entry; a drainer that popped it a moment before
must not put it on the broker. So right before a handler's broker write, :class:`CancelCheck`
commits the entry (``commit_entries.lua``): atomically, an entry still DRAINING under the lease
of its pop is marked committed to the broker, one that is gone was cancelled (the handler drops
it), and one whose lease passed to another drainer is not written at all. From the mark on, a
cancel leaves the entry alone and reports it too late. So every cancel that reports success is a
message that never reaches the broker, and one that loses says so.

One round trip per message would cost a third of the drain's throughput, so the first handler
of a popped batch to reach its write commits the whole batch (what is left of it) in one call;
the batch's other handlers are answered from that. An entry of the batch whose handler then fails
before its write (an undeclared actor, say) stays committed until it is settled: requeued or
given back, it loses the mark and can be cancelled again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import redis

from ..buffer.codec import boundary
from ..buffer.keys import KeySpace
from ..buffer.scripts import run, script_source
from ..errors import MollifierError
from ..models import BufferEntry

__all__ = ["CancelCheck", "LeaseLost"]

# Entries committed per round trip at most.
_BATCH = 500
# How long a popped batch nobody asks about is kept, in seconds (audited entries, say).
_FORGET_S = 60.0
# The bytes commit_entries.lua answers per entry.
_COMMITTED, _GONE = ord("0"), ord("1")


class LeaseLost(MollifierError):
    """The entry's lease passed to another drainer before its broker write: not written here."""


class _Batch:
    """The entries of one pop, and their verdicts once the first of them was committed."""

    __slots__ = ("entries", "lock", "popped_at", "unasked", "verdicts")

    def __init__(self, entries: list[BufferEntry], popped_at: float) -> None:
        self.entries = entries
        self.popped_at = popped_at
        self.unasked = {entry.message_id for entry in entries}
        self.lock = threading.Lock()
        self.verdicts: dict[str, int] | None = None


class CancelCheck:
    """``check(entry)``: commit a popped entry to its broker write; True if it was cancelled.

    Raises :class:`LeaseLost` when the entry's lease is another drainer's now.

    Parameters:
      client: The buffer's client.
      keys: The buffer's key space.
      clock: Monotonic seconds. Defaults to ``time.monotonic``.
    """

    def __init__(
        self, client: redis.Redis, keys: KeySpace, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._keys = keys
        self._clock = clock
        self._script = client.register_script(script_source("commit_entries"))
        self._lock = threading.Lock()
        # Owner token of a pop -> its batch, until each entry was asked about (or forgotten).
        self._batches: dict[str, _Batch] = {}

    def popped(self, entries: Sequence[BufferEntry]) -> None:
        """Entries about to go to the handlers (one pop: they share its owner token)."""
        now = self._clock()
        by_owner: dict[str, list[BufferEntry]] = {}
        for entry in entries:
            if entry.lease_owner:
                by_owner.setdefault(entry.lease_owner, []).append(entry)
        with self._lock:
            for owner in [o for o, b in self._batches.items() if now - b.popped_at > _FORGET_S]:
                del self._batches[owner]
            for owner, batch in by_owner.items():
                self._batches[owner] = _Batch(batch, now)

    def __call__(self, entry: BufferEntry) -> bool:
        """Commit ``entry`` (and the rest of its batch); whether it was cancelled instead."""
        with self._lock:
            batch = self._batches.get(entry.lease_owner or "")
        if batch is None or entry.message_id not in batch.unasked:
            verdict = self._commit([entry])[entry.message_id]
        else:
            with batch.lock:
                if batch.verdicts is None:
                    batch.verdicts = self._commit(batch.entries)
                verdict = batch.verdicts[entry.message_id]
                batch.unasked.discard(entry.message_id)
                if not batch.unasked:
                    with self._lock:
                        self._batches.pop(entry.lease_owner or "", None)
        if verdict == _COMMITTED:
            return False
        if verdict == _GONE:
            return True
        raise LeaseLost(
            f"buffered message {entry.message_id!r}: its lease passed to another drainer before "
            "the broker write; not written here"
        )

    def _commit(self, entries: Sequence[BufferEntry]) -> dict[str, int]:
        verdicts: dict[str, int] = {}
        with boundary("cancel_check"):
            for start in range(0, len(entries), _BATCH):
                chunk = entries[start : start + _BATCH]
                flags = run(
                    self._client,
                    self._script,
                    len(chunk),
                    *(self._keys.group_of(e.org_id).entry(e.message_id) for e in chunk),
                    *(e.lease_owner or "" for e in chunk),
                )
                verdicts.update((e.message_id, flag) for e, flag in zip(chunk, flags, strict=True))
        return verdicts
