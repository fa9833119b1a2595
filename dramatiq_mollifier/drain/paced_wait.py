"""How long a drainer the budget stopped waits before it claims again.

Long enough that about half of what it left in the broker is consumed by then: the broker still
holds the other half, and each claim moves a refill rather than a message or two. A budget sized
by the consumption rate takes half its target wait to half empty, so that is the longest wait.

At a burst's start the budget is its floor and then trails the workers (the rate counts starts,
and the budget limits them): the workers emptied the broker well within that wait and sat idle
until the next refill (``bench_smoothing.py``: about 900 burst messages started in the burst's
first 750 ms with two worker processes, against about 1,400 without the mollifier). So
:class:`PacedWait` measures each wait: a drainer that finds three quarters of what it left
consumed by its next claim halves its wait, one that finds less than half consumed doubles it
back.
"""

from __future__ import annotations

import time

__all__ = ["MIN_PACED_WAIT_MS", "PacedWait"]

#: The shortest wait, in ms.
MIN_PACED_WAIT_MS = 5


class PacedWait:
    """The wait of one drainer, measured at its claims.

    Parameters:
      longest_ms: The longest wait (and the first), in ms: half the target wait for a budget
        sized by the consumption rate.
      adaptive: False keeps the longest wait: a fixed budget, or a rate cap, whose tokens, not
        the workers, decide how much each claim gets.
    """

    def __init__(self, *, longest_ms: int, adaptive: bool = True) -> None:
        self.longest_ms = max(MIN_PACED_WAIT_MS, longest_ms)
        self.adaptive = adaptive
        self.wait_ms = self.longest_ms
        # What the last claim left in the broker or on the way (fleet-wide), when, and whether
        # the backlog left some of its slots unused (then it says nothing of the workers' pace).
        self._level = 0
        self._at = 0.0
        self._short = False

    def claimed(self, *, level: int, granted: int) -> None:
        """A claim found ``level`` slots taken (in the broker or on their way) and got ``granted``."""
        now = time.monotonic()
        left, short, elapsed_ms = self._level, self._short, (now - self._at) * 1000
        self._level, self._at, self._short = level + granted, now, False
        # Claims a moment apart (one tick) say nothing of the workers' pace, and after a longer
        # gap (an idle drainer, a slow tick) the level is stale: the next wait is measured instead.
        if not self.adaptive or short or left <= 0:
            return
        if not self.wait_ms / 2 <= elapsed_ms <= 2 * self.wait_ms + MIN_PACED_WAIT_MS:
            return
        if level * 4 <= left:
            self.wait_ms = max(MIN_PACED_WAIT_MS, self.wait_ms // 2)
        elif level * 2 > left:
            self.wait_ms = min(self.longest_ms, self.wait_ms * 2)

    def unused(self, count: int) -> None:
        """``count`` slots of the last claim carried nothing (freed again): the backlog, not the
        budget, was the limit, so the next claim measures nothing."""
        self._level, self._short = max(0, self._level - count), True

    def reset(self) -> None:
        """Back to the longest wait (a failed claim: nothing was measured)."""
        self.wait_ms, self._level = self.longest_ms, 0
