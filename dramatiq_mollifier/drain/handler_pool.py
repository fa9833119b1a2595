"""The drainer's handler threads: at most ``size``, completions handed back to the tick."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence

from ..models import BufferEntry
from .parallelism import AdaptiveParallelism

__all__ = ["MANY_CHUNK_MIN", "BatchHandler", "Completion", "DrainHandler", "HandlerPool", "NotStarted"]

#: Called once per popped entry; raising means the attempt failed.
DrainHandler = Callable[[BufferEntry], None]
#: A handler's optional ``many``: handles a chunk at once, one result per entry (None: success).
BatchHandler = Callable[[Sequence[BufferEntry]], list[BaseException | None]]

#: Entries per chunk at least, for a batch handler: its chunk goes to the broker in one round
#: trip (or one hand-over), so splitting a pop into chunks of one or two entries (as the
#: parallelism would, the handlers waiting on I/O) multiplies round trips, thread wake-ups and
#: switches of the interpreter lock: what a drained message costs the worker process.
MANY_CHUNK_MIN = 32

#: What a pool thread hands back: the entry and the handler's exception (None on success).
Completion = tuple[BufferEntry, BaseException | None]


class NotStarted(Exception):
    """The pool was stopping before this entry's handler ran: give the entry back, untried."""


class HandlerPool:
    """Daemon threads that run the handler; completions go back to the tick that submitted them.

    A batch goes out in as many chunks as :class:`AdaptiveParallelism` allows; a thread runs
    the handler on each entry of its chunk in turn, and the tick is woken once enough entries
    are done, not once per entry. Every hand-over between threads is a switch of the GIL, which
    on a small machine costs about as much as a fast handler.

    A handler with a ``many`` attribute (:class:`~.handler.BrokerDrainHandler`) gets each chunk
    in one call, so it can write the chunk to the broker in one round trip; its chunks hold at
    least :data:`MANY_CHUNK_MIN` entries (a smaller batch is one chunk).

    :meth:`stop_starting` makes the threads skip what is left of their chunks: those entries come
    back as :class:`NotStarted`. Once abandoned (``stop`` ran out of time), a handler that
    finishes later settles its own entry, so it is still acked instead of waiting for its lease
    to expire. The threads are daemons so that a hung handler never keeps the process from
    exiting.
    """

    def __init__(self, size: int, handler: DrainHandler, settle: Callable[[Completion], None]) -> None:
        self.size = size
        self.in_flight = 0  # touched by the tick's thread only
        # The handlers' own CPU time, not the process's: actors running in the same worker
        # process must not make the drainer think its handlers keep the interpreter busy.
        self._handler_cpu_s = 0.0
        self.parallelism = AdaptiveParallelism(size, cpu_clock=self.handler_cpu_s)
        self._handler = handler
        self._many: BatchHandler | None = getattr(handler, "many", None)
        self._settle = settle
        self._work: queue.SimpleQueue[Sequence[BufferEntry] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._enough_done = threading.Condition(self._lock)
        self._done: list[Completion] = []
        self._wanted = 1
        self._starting = True
        self.abandoned = False

    def submit(self, entries: Sequence[BufferEntry]) -> None:
        """Run the handler on each entry, in as many chunks side by side as the parallelism."""
        if not entries:
            return
        chunks = min(self.parallelism.update(), len(entries))
        if self._many is not None:
            chunks = min(chunks, max(1, len(entries) // MANY_CHUNK_MIN))
        step = -(-len(entries) // chunks)
        # Each entry in flight before this batch is in at most one chunk.
        wanted_threads = min(self.size, self.in_flight + chunks)
        while len(self._threads) < wanted_threads:
            thread = threading.Thread(target=self._run, name="mollifier-drain-handler", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had (a process at its limit): fewer do the work
                break
            self._threads.append(thread)
        self.in_flight += len(entries)
        if not self._threads:
            # Nothing can run them: they go back untried, or the tick would wait for them forever.
            self._hand_back(entries, [NotStarted() for _ in entries])
            return
        for start in range(0, len(entries), step):
            self._work.put(entries[start : start + step])

    def _run(self) -> None:
        while (chunk := self._work.get()) is not None:
            if self._many is not None:
                self._hand_back(chunk, self._run_many(chunk))
                continue
            for entry in chunk:
                error: BaseException | None = None
                cpu_s = 0.0
                if self._starting:
                    started_cpu_s = time.thread_time()
                    try:
                        self._handler(entry)
                    except BaseException as exc:
                        error = exc
                    cpu_s = time.thread_time() - started_cpu_s
                else:
                    error = NotStarted()
                self._hand_back([entry], [error], cpu_s)

    def _run_many(self, chunk: Sequence[BufferEntry]) -> list[BaseException | None]:
        if not self._starting or self._many is None:
            return [NotStarted() for _ in chunk]
        started_cpu_s = time.thread_time()
        try:
            errors = self._many(chunk)
            if len(errors) != len(chunk):  # a thread that died of it would never hand back
                raise TypeError(f"the drain handler's many() gave {len(errors)} results for {len(chunk)}")
        except BaseException as exc:
            errors = [exc] * len(chunk)
        with self._lock:
            self._handler_cpu_s += time.thread_time() - started_cpu_s
        return errors

    def _hand_back(
        self, entries: Sequence[BufferEntry], errors: Sequence[BaseException | None], cpu_s: float = 0.0
    ) -> None:
        with self._lock:
            self._handler_cpu_s += cpu_s
            if not self.abandoned:
                self._done.extend(zip(entries, errors, strict=True))
                if len(self._done) >= self._wanted:
                    self._enough_done.notify()
                return
        for completion in zip(entries, errors, strict=True):
            self._settle(completion)

    def handler_cpu_s(self) -> float:
        """CPU time the handlers have used so far, in seconds (each thread's ``thread_time``)."""
        return self._handler_cpu_s  # a float read is atomic; the threads add to it under the lock

    def take(self, at_least: int) -> list[Completion]:
        """The completions so far, once there are ``at_least`` or the pool is abandoned."""
        with self._lock:
            self._wanted = at_least
            while len(self._done) < at_least and not self.abandoned:
                self._enough_done.wait()
            done, self._done = self._done, []
            return done

    def stop_starting(self) -> None:
        """Run no more handlers: entries not started yet come back as :class:`NotStarted`."""
        self._starting = False

    def abandon(self) -> None:
        """Stop handing completions to the tick, and wake it."""
        with self._lock:
            self.abandoned = True
            self._enough_done.notify_all()

    def close(self) -> None:
        """Let every thread exit once its current chunk is done."""
        for _ in self._threads:
            self._work.put(None)
