"""The overview chart's data: buffer depth and broker-queue depth, sampled over the last minutes.

A daemon thread samples every ``interval_ms`` into a ring of ``points`` samples, so a page opened
now shows the minutes before it; the thread starts on the first read (never at import, never in a
process that serves no page), stops by itself once nobody has read the chart for as long as it
spans (a mounted dashboard nobody watches does not poll Redis forever), and stops for good with
:meth:`DepthSeries.close`. A failed sample (Redis down) is skipped, never raised: the chart shows
a gap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_INTERVAL_MS", "DEFAULT_POINTS", "DepthSeries", "Sample"]

logger = logging.getLogger(__name__)

#: Time between two samples of the chart, in milliseconds.
DEFAULT_INTERVAL_MS = 2_000
#: Samples kept: 300 at 2 s is the last 10 minutes.
DEFAULT_POINTS = 300


@dataclass(frozen=True)
class Sample:
    """One point of the chart."""

    at_ms: int
    buffer_depth: int
    broker_depth: int | None


class DepthSeries:
    """A ring of depth samples filled by a background thread.

    Parameters:
      buffer_depth: Reads the buffer's total depth.
      broker_depth: Reads the broker queues' depth; None when unknown.
      interval_ms: Time between samples. Defaults to ``DEFAULT_INTERVAL_MS``.
      points: Samples kept. Defaults to ``DEFAULT_POINTS``.
    """

    def __init__(
        self,
        *,
        buffer_depth: Callable[[], int],
        broker_depth: Callable[[], int] | None = None,
        interval_ms: int = DEFAULT_INTERVAL_MS,
        points: int = DEFAULT_POINTS,
    ) -> None:
        if not 100 <= interval_ms <= 60_000:
            raise ValueError(f"interval_ms must be within 100..60000, got {interval_ms}")
        if not 2 <= points <= 10_000:
            raise ValueError(f"points must be within 2..10000, got {points}")
        self._buffer_depth = buffer_depth
        self._broker_depth = broker_depth
        self.interval_ms = interval_ms
        self._samples: deque[Sample] = deque(maxlen=points)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Sampling stops after this long without a read: the span of the chart.
        self._idle_s = interval_ms * points / 1000
        self._read_at = time.monotonic()

    def sample(self) -> None:
        """Take one sample now (skipped if a read fails)."""
        try:
            buffer_depth = self._buffer_depth()
            broker_depth = self._broker_depth() if self._broker_depth is not None else None
        except Exception as exc:
            logger.debug("dashboard: depth sample failed: %s", exc)
            return
        with self._lock:
            self._samples.append(Sample(int(time.time() * 1000), buffer_depth, broker_depth))

    def samples(self) -> list[Sample]:
        """The samples kept, oldest first; starts the sampler on first use."""
        self._read_at = time.monotonic()
        self._ensure_started()
        with self._lock:
            return list(self._samples)

    @property
    def sampling(self) -> bool:
        """Whether the sampler thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _ensure_started(self) -> None:
        with self._lock:
            if (self._thread is not None and self._thread.is_alive()) or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="mollifier-dashboard-series", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # The first sample too, off the request: on a stalled Redis it waited a socket timeout
        # before the page's own reads waited theirs (20 s for /api/overview).
        self.sample()
        while not self._stop.wait(self.interval_ms / 1000):
            if time.monotonic() - self._read_at > self._idle_s:
                return  # nobody watches: the next read starts it again
            self.sample()

    def close(self) -> None:
        """Stop the sampler thread (idempotent)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
