"""The drainer's fairness: orgs round-robin in a sliding window, then one env per org."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["OrgEnvRotation"]


class OrgEnvRotation:
    """Two-level round robin: a window of orgs sliding by one per tick, then one env per org.

    Cursors hold names, not positions, so an org or env that comes or goes between ticks does not
    make the rotation skip its neighbour. Env cursors exist only for orgs in the last window: an
    org that slides out of it starts again at its first env when it comes back.
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

    @property
    def org_cursor(self) -> str | None:
        """The first org of the last window: the next one starts after it (None: at the first)."""
        return self._org_cursor

    def pick_orgs(self, window: Sequence[str]) -> list[str]:
        """Take ``window`` as this tick's orgs and move the cursor to its first org.

        ``window`` is what :meth:`MollifierBuffer.org_window` answers for :attr:`org_cursor`
        and :attr:`max_orgs`: the orgs in order from the one after the cursor, wrapping around.
        """
        picked = list(window[: self.max_orgs])
        self._org_cursor = picked[0] if picked else None
        if len(self._env_cursors) > 0:
            kept = set(picked)
            for org in [org for org in self._env_cursors if org not in kept]:
                del self._env_cursors[org]
        return picked

    def pick_env(self, org_id: str, envs: Sequence[str]) -> str:
        """The env of ``org_id`` that comes after the one picked last time, from ``envs`` (sorted)."""
        last = self._env_cursors.get(org_id)
        index = 0 if last is None else bisect.bisect_right(envs, last) % len(envs)
        self._env_cursors[org_id] = envs[index]
        return envs[index]
