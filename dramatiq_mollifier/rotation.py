"""The drainer's fairness: orgs round-robin in a sliding window, then one env per org."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["OrgEnvRotation"]


class OrgEnvRotation:
    """Two-level round robin: a window of orgs sliding by one per tick, then one env per org.

    Cursors hold names, not positions, so an org or env that comes or goes between ticks does not
    make the rotation skip its neighbour. Env cursors exist only for orgs listed in the last tick.
    """

    def __init__(self, max_orgs: int) -> None:
        self.max_orgs = max_orgs
        self._org_cursor: str | None = None
        self._env_cursors: dict[str, str] = {}

    def reset(self) -> None:
        """Forget every cursor: the next tick starts at the first org and each org's first env."""
        self._org_cursor = None
        self._env_cursors.clear()

    @property
    def cursor_count(self) -> int:
        """How many per-org env cursors are held (never more than the orgs last listed)."""
        return len(self._env_cursors)

    def pick_orgs(self, orgs: Sequence[str]) -> list[str]:
        """The window of at most ``max_orgs`` from ``orgs`` (sorted) for this tick, wrapping."""
        if not orgs:
            self._env_cursors.clear()
            return []
        start = 0 if self._org_cursor is None else bisect.bisect_right(orgs, self._org_cursor)
        start %= len(orgs)
        self._org_cursor = orgs[start]
        if len(self._env_cursors) > 0:
            listed = set(orgs)
            for org in [org for org in self._env_cursors if org not in listed]:
                del self._env_cursors[org]
        count = min(self.max_orgs, len(orgs))
        return [orgs[(start + i) % len(orgs)] for i in range(count)]

    def pick_env(self, org_id: str, envs: Sequence[str]) -> str:
        """The env of ``org_id`` that comes after the one picked last time, from ``envs`` (sorted)."""
        last = self._env_cursors.get(org_id)
        index = 0 if last is None else bisect.bisect_right(envs, last) % len(envs)
        self._env_cursors[org_id] = envs[index]
        return envs[index]
