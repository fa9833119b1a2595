"""How many chunks the drainer splits a batch into: as many as keep the interpreter busy.

Handlers that mostly wait (on a network, a sleep, a lock) gain from running side by side; handlers
that mostly compute do not, since the GIL runs one thread at a time, and every switch between
threads costs about as much as a fast handler. The handlers' CPU time over a short window tells
which case holds: little CPU used means the handlers wait, so run more at once; about one CPU
used means the interpreter is the bottleneck, so run fewer. The handlers' own time, measured in
their threads (``HandlerPool.handler_cpu_s``), not the process's: actors running beside the
drainer in a worker process would otherwise throttle it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["GROW_BELOW", "SHRINK_ABOVE", "WINDOW_MS", "AdaptiveParallelism"]

#: Below this share of one CPU used by the process, the handlers mostly wait: double the chunks.
GROW_BELOW = 0.5
#: Above this share, the interpreter is the bottleneck: halve the chunks.
SHRINK_ABOVE = 0.9
#: The shortest window over which the share is measured, in milliseconds.
WINDOW_MS = 50


class AdaptiveParallelism:
    """A number between 1 and ``limit``, doubled or halved after each window by CPU use.

    Parameters:
      limit: The most chunks at once (the drainer's concurrency).
      window_ms: The shortest measuring window. Defaults to :data:`WINDOW_MS`.
      clock: Wall time in seconds. Defaults to ``time.perf_counter``.
      cpu_clock: The CPU time, in seconds, of the threads whose work is measured. Defaults to
        ``time.process_time`` (the whole process); the drainer's pool passes its handlers' own.
    """

    def __init__(
        self,
        limit: int,
        *,
        window_ms: int = WINDOW_MS,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.limit = limit
        self.value = 1
        self._window_s = window_ms / 1000
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.restart()

    def restart(self) -> None:
        """Begin a new window now (after an idle spell, which says nothing about the handlers)."""
        self._since = self._clock()
        self._cpu_since = self._cpu_clock()

    def update(self) -> int:
        """The current value, adjusted first if a whole window has passed since the last one."""
        now = self._clock()
        elapsed = now - self._since
        if elapsed >= self._window_s:
            cpu = self._cpu_clock()
            share = (cpu - self._cpu_since) / elapsed
            if share < GROW_BELOW:
                self.value = min(self.limit, self.value * 2)
            elif share > SHRINK_ABOVE:
                self.value = max(1, self.value // 2)
            self._since, self._cpu_since = now, cpu
        return self.value
