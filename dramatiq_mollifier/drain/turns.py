"""Weighted turns: an org of weight ``w`` is served ``w`` env visits per round, others one.

A visit is one :meth:`~dramatiq_mollifier.MollifierDrainer._drain_env` call: a batch, or, under
the drain budget, the slots free at that moment. An org's turn lasts until it used its visits or
a visit found nothing; a tick that the budget stops before a visit got anything keeps the turn,
so the next tick resumes it where it stopped. An org that runs dry loses what was left of its
turn, and one that comes back from idle joins the rotation where it stands with a fresh turn: no
credit is banked while idle, so there is no burst after it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..buffer.rules import TenantRules

__all__ = ["WeightedTurn", "runnable_envs"]


class WeightedTurn:
    """The org whose turn it is and the visits it has left (one drainer, its tick thread only)."""

    __slots__ = ("_left", "_org")

    def __init__(self) -> None:
        self._org: str | None = None
        self._left = 0

    def begin(self, org_id: str, weight: int) -> int:
        """Visits ``org_id`` has left: what a turn stopped by the budget kept, else ``weight``."""
        if self._org != org_id:
            self._org, self._left = org_id, max(1, weight)
        return self._left

    def used(self) -> int:
        """One visit done; the visits left."""
        self._left -= 1
        return self._left

    def take(self, org_id: str, weight: int, visit: Callable[[], int | None]) -> bool:
        """Run ``org_id``'s turn: ``visit()`` (entries popped, -1 when the budget stopped it
        before any, None when the drainer was abandoned) until the visits are used or one finds
        nothing. False if abandoned."""
        left = self.begin(org_id, weight)
        while left > 0:
            popped = visit()
            if popped is None:
                return False
            if popped < 0:
                return True  # the turn resumes next tick
            left = self.used()
            if popped == 0:
                break  # nothing there: the turn ends, no credit kept
        self.end()
        return True

    def end(self) -> None:
        """The turn is over (visits used, or the org ran dry)."""
        self._org = None
        self._left = 0


def runnable_envs(rules: TenantRules, org_id: str, envs: list[str]) -> list[str]:
    """``envs`` of ``org_id`` without the paused ones (none if the org is paused): an operator
    holds them in the buffer until they are resumed."""
    if not rules.paused:
        return envs
    if rules.org_paused(org_id):
        return []
    return [env for env in envs if not rules.is_paused(org_id, env)]
