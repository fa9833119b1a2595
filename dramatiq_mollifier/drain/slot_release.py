"""Slot frees batched per process: a worker thread hands an id over, one Redis call frees many.

A worker's :class:`~dramatiq_mollifier.Mollifier` frees a drained message's budget slot as the
message starts. One ``ZREM`` per message, on the worker thread, costs that thread a round trip
plus a wait for the interpreter lock, which in a busy worker process is milliseconds: with a 5 ms
actor it took about 40% of the worker's capacity, the capacity the drain pace exists to keep
busy. :class:`SlotReleaser` takes the id on the worker thread (a list append) and a daemon thread
frees what has gathered every ``flush_interval_ms``, in one call, so a slot comes back at most
that much later and the worker threads never wait for Redis.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

__all__ = ["FLUSH_INTERVAL_MS", "SlotReleaser"]

#: How long started messages' ids gather before one call frees their slots, in milliseconds.
#: Each call costs the worker process a wake-up and a round trip: at 10 ms the releaser took 15
#: to 30 µs of a drained message's CPU. At 20 it takes half that; the budget then sees a slot
#: about 5 ms later, about 5 ms less of the target wait in the broker (bench_smoothing.py, 12
#: interleaved pairs: completion no worse in 10, the quiet p99's medians no higher).
FLUSH_INTERVAL_MS = 20


class SlotReleaser:
    """Gathers ids of started drained messages and frees their slots in batches.

    Parameters:
      release: Frees the slots of the given ids (:meth:`DrainPace.release`); must not raise.
      flush_interval_ms: The most an id waits before its slot is freed. Defaults to
        :data:`FLUSH_INTERVAL_MS`.

    The thread starts on the first :meth:`add` in a process (a fork gets its own) and sleeps
    while nothing is pending; :meth:`stop` frees what is pending and ends it.
    """

    def __init__(
        self, *, release: Callable[[Sequence[str]], None], flush_interval_ms: int = FLUSH_INTERVAL_MS
    ) -> None:
        if flush_interval_ms < 1:
            raise ValueError(f"flush_interval_ms must be at least 1, got {flush_interval_ms!r}")
        self._release = release
        self.flush_interval_ms = flush_interval_ms
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, message_id: str) -> None:
        """Free ``message_id``'s slot within ``flush_interval_ms`` (never blocks on Redis)."""
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._start()
            self._pending.append(message_id)
            if len(self._pending) == 1:
                self._wake.notify()

    def _start(self) -> None:
        # Called under the lock: a fork inherits the list but not the thread.
        self._pid = os.getpid()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mollifier-slot-release", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Free every pending slot now, on the calling thread."""
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self._release(pending)

    def stop(self, timeout_ms: int = 1_000) -> None:
        """Free what is pending and end the thread (a later :meth:`add` starts it again)."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_ms / 1000)
        self.flush()

    def _run(self) -> None:
        interval_s = self.flush_interval_ms / 1000
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                # Let a few more starts gather: one call for all of them.
                self._wake.wait(interval_s)
                pending, self._pending = self._pending, []
            self._release(pending)
