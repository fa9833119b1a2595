"""Cancel wins over a drain: right before each broker write, whether the entry was cancelled.

An operator's cancel deletes the entry, DRAINING or not; a drainer that popped it a moment before
must not put it on the broker. Asking Redis once per message costs a round trip per drained
message (measured: a third more client CPU per message), so :class:`CancelCheck` keeps a verdict
per popped entry: its pop proves it existed then (a cancel before the pop takes it out of the
queue), and a verdict serves for ``window_ms``. A handler whose entry's verdict is older checks
it again, together with every other verdict about to go stale, in one script call, so an
entry waiting behind slow handlers costs a fraction of a round trip. So a cancel wins whenever it lands
more than ``window_ms`` (10 ms) before the broker write; one that lands in those last
milliseconds may lose, and the message is delivered once, as if not cancelled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import redis

from ..buffer.codec import boundary
from ..buffer.keys import KeySpace
from ..buffer.scripts import run, script_source
from ..models import BufferEntry

__all__ = ["CANCEL_CHECK_WINDOW_MS", "CancelCheck"]

#: How long a verdict serves before it is checked again, in milliseconds.
CANCEL_CHECK_WINDOW_MS = 10
# Entries checked per round trip at most.
_BATCH = 500
# How long a popped id nobody asks about is kept, in seconds (a lease).
_FORGET_S = 60.0
# The byte entries_gone.lua answers for an entry that is gone.
_GONE = ord("1")


class CancelCheck:
    """``check(message_id)``: whether the popped entry was cancelled (its hash is gone).

    Parameters:
      client: The buffer's client.
      keys: The buffer's key space.
      window_ms: How long a verdict serves. Defaults to :data:`CANCEL_CHECK_WINDOW_MS`; 0 checks
        each message on its own.
      clock: Monotonic seconds. Defaults to ``time.monotonic``.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        *,
        window_ms: int = CANCEL_CHECK_WINDOW_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._keys = keys
        self._window_s = window_ms / 1000
        self._clock = clock
        self._script = client.register_script(script_source("entries_gone"))
        self._lock = threading.Lock()
        # Popped ids not asked about yet -> (when last known to exist or not, gone); and when
        # each was popped, to forget those nobody asks about (an audited entry, say).
        self._verdicts: dict[str, tuple[float, bool]] = {}
        self._popped_at: dict[str, float] = {}

    def popped(self, entries: Sequence[BufferEntry]) -> None:
        """Entries about to go to the handlers. The pop itself proves each existed just now (a
        cancel before the pop would have taken it out of the queue), so that is their verdict."""
        if self._window_s > 0:
            now = self._clock()
            with self._lock:
                for entry in entries:
                    self._verdicts[entry.message_id] = (now, False)
                    self._popped_at[entry.message_id] = now

    def __call__(self, message_id: str) -> bool:
        """Whether ``message_id`` was cancelled (checked at most ``window_ms`` ago)."""
        now = self._clock()
        with self._lock:
            self._popped_at.pop(message_id, None)
            verdict = self._verdicts.pop(message_id, None)
            if verdict is not None and now - verdict[0] <= self._window_s:
                return verdict[1]
            for forgotten in [mid for mid, at in self._popped_at.items() if now - at > _FORGET_S]:
                del self._popped_at[forgotten]
                self._verdicts.pop(forgotten, None)
            # Every verdict about to go stale goes along: one call for the handlers' backlog.
            soon = now - self._window_s / 2
            ids = [message_id, *[mid for mid, (at, _) in self._verdicts.items() if at < soon][: _BATCH - 1]]
        with boundary("cancel_check"):
            entries = [self._keys.entry(checked) for checked in ids]
            gone = run(self._client, self._script, len(entries), *entries)
        with self._lock:
            for checked, flag in zip(ids[1:], gone[1:], strict=True):
                if checked in self._verdicts:
                    self._verdicts[checked] = (now, flag == _GONE)
        return bool(gone[0] == _GONE)
