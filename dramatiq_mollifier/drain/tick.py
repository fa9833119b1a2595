"""What one drainer tick did: the public :class:`DrainResult` and the counters a tick keeps."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DrainResult", "Tick"]


class DrainResult(NamedTuple):
    """What one tick did: entries acked, failures (handler errors and per-env pop errors), and
    whether it stopped because the drain budget was used up (the loop then waits briefly).
    """

    drained: int
    failed: int
    paced: bool = False
    #: Nothing was queued at all (the drainer may block until something is).
    empty: bool = False


class Tick:
    """Counters of one tick, while it runs."""

    __slots__ = ("drained", "failed", "paced", "popped", "spent")

    def __init__(self) -> None:
        self.drained = 0
        self.failed = 0
        #: The budget stopped a visit before it got anything (that org goes first next tick).
        self.paced = False
        self.popped = 0
        #: A claim got fewer slots than it asked for: the budget is used up for now, so the tick
        #: ends after that visit (another claim now would get a slot or two, or none).
        self.spent = False

    def add_moved(self, moved: int, *, failed: bool) -> None:
        """Count a chunk moved onto the broker in Redis (popped and drained at once), or a failed move."""
        self.popped += moved
        self.drained += moved
        self.failed += failed

    def result(self, *, empty: bool) -> DrainResult:
        return DrainResult(self.drained, self.failed, self.paced or self.spent, empty=empty)
