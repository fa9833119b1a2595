"""The drainer's handler threads: at most ``size``, completions handed back to the tick."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from .models import BufferEntry

__all__ = ["Completion", "DrainHandler", "HandlerPool"]

#: Called once per popped entry; raising means the attempt failed.
DrainHandler = Callable[[BufferEntry], None]

#: What a pool thread hands back: the entry and the handler's exception (None on success).
Completion = tuple[BufferEntry, BaseException | None]
#: Put on the completion queue to wake the tick when the pool is abandoned.
WAKE = None


class HandlerPool:
    """Daemon threads that run the handler; completions go back to the tick that submitted them.

    Once abandoned (``stop`` ran out of time), a handler that finishes later settles its own
    entry, so it is still acked instead of waiting for its lease to expire. The threads are
    daemons so that a hung handler never keeps the process from exiting.
    """

    def __init__(self, size: int, handler: DrainHandler, settle: Callable[[Completion], None]) -> None:
        self.size = size
        self.in_flight = 0  # touched by the tick's thread only
        self.completions: queue.SimpleQueue[Completion | None] = queue.SimpleQueue()
        self._handler = handler
        self._settle = settle
        self._work: queue.SimpleQueue[BufferEntry | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.abandoned = False

    def submit(self, entry: BufferEntry) -> None:
        self.in_flight += 1
        if len(self._threads) < min(self.size, self.in_flight):
            thread = threading.Thread(target=self._run, name="mollifier-drain-handler", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._work.put(entry)

    def _run(self) -> None:
        while (entry := self._work.get()) is not None:
            error: BaseException | None = None
            try:
                self._handler(entry)
            except BaseException as exc:
                error = exc
            with self._lock:
                if not self.abandoned:
                    self.completions.put((entry, error))
                    continue
            self._settle((entry, error))

    def take(self, *, block: bool) -> list[Completion]:
        """Every completion queued now, after waiting for the first one if ``block``."""
        items = [self.completions.get()] if block else []
        while True:
            try:
                items.append(self.completions.get_nowait())
            except queue.Empty:
                return [item for item in items if item is not None]

    def abandon(self) -> None:
        """Stop handing completions to the tick, and wake it."""
        with self._lock:
            self.abandoned = True
        self.completions.put(WAKE)

    def close(self) -> None:
        """Let every thread exit once its current handler returns."""
        for _ in self._threads:
            self._work.put(None)
