"""The drainer's background loop: a tick, then the wait it calls for, until stopped.

:class:`DrainLoop` is the part of :class:`~.drainer.MollifierDrainer` that its thread runs: the
wait after each tick is brief when the budget stopped it (workers free slots as they start
drained messages), a poll when it drained nothing but something may come back (held entries,
acks to retry), and a block on the buffer's wake-up list when nothing is queued at all. A failed
tick backs off exponentially. Every wait is on the stop event, so ``stop`` wakes it at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..errors import BufferUnavailableError
from .failures import backoff_ms
from .idle import IdleWait
from .pace import DrainPace
from .paced_wait import MIN_PACED_WAIT_MS
from .settling import Settler
from .tick import DrainResult

__all__ = ["DrainLoop"]

logger = logging.getLogger(__name__)


class DrainLoop:
    """The loop of a drainer's thread (a base of :class:`~.drainer.MollifierDrainer`, which sets
    the attributes below)."""

    poll_interval_ms: int
    _stopping: threading.Event
    _settler: Settler
    _idle_wait: IdleWait
    _pace: DrainPace | None
    _sleep: Callable[[int], object]
    # Blocking between ticks (nothing queued), and whether the last block ended with a token.
    _deep_idle: bool
    _woken: bool

    def run_once(self) -> DrainResult:
        raise NotImplementedError

    def _wait(self, delay_ms: int) -> None:
        self._stopping.wait(delay_ms / 1000)

    def _loop(self) -> None:
        stopping = self._stopping
        failures = 0
        while not stopping.is_set():
            try:
                result = self.run_once()
                # Before settle_due: entries it gives back are queued work again.
                may_block = result.empty and result.failed == 0 and self._may_block()
                self._settler.settle_due()
                self._settler.check_broker()
                self._pause(result, may_block)
            except Exception:
                failures += 1
                delay_ms = backoff_ms(self.poll_interval_ms, failures)
                logger.warning(
                    "mollifier.drain_error tick failed %d time(s) in a row; next try in %d ms",
                    failures,
                    delay_ms,
                    exc_info=failures == 1,
                )
                self._sleep(delay_ms)
                continue
            if failures:
                logger.info("mollifier.drainer recovered after %d failed tick(s)", failures)
                failures = 0

    def _pause(self, result: DrainResult, may_block: bool) -> None:
        """The wait after a tick: brief when paced, a block on the wake-up list when idle."""
        woken, self._woken = self._woken, False
        self._deep_idle = self._deep_idle and result.empty
        if woken and (result.drained or result.paced):
            # Woken by a token, and there was work: wake the next idle drainer to join in.
            self._idle_wait.signal()
        if result.paced:
            # The fleet's workers free slots as they start drained messages: look again once a
            # part of the budget is free (a claim per part, not per message).
            self._sleep(MIN_PACED_WAIT_MS if self._pace is None else self._pace.paced_wait_ms)
        elif result.drained == 0 and not may_block:
            self._sleep(self.poll_interval_ms)
        elif result.drained == 0:
            self._deep_idle = True
            self._woken = self._idle_wait.wait()
            if self._idle_wait.failed:
                raise BufferUnavailableError("the idle wait on the wake-up list failed")

    def _may_block(self) -> bool:
        """Whether nothing is left for this drainer to do until something is queued."""
        busy = self._settler.held or self._settler.unacked or self._stopping.is_set()
        return self._idle_wait.enabled and not busy
