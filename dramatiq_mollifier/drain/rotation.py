"""The drainer's fairness: orgs round-robin, then one env per org round-robin."""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["OrgEnvRotation"]


#: Env cursors kept at least (the least recently used go first beyond it).
MIN_ENV_CURSORS = 10_000


class OrgEnvRotation:
    """Two-level round robin: orgs in turn, then one env per org in turn.

    A tick reads a window of orgs starting after :attr:`org_cursor` and reports each org it
    served with :meth:`visited`, so the next tick starts right after the last org served: every
    org with work is visited within one rotation, however many orgs there are and however few a
    tick serves (a tick that the drain budget stops early serves only a few). Cursors hold names,
    not positions, so an org or env that comes or goes between ticks does not make the rotation
    skip its neighbour. Env cursors outlive the window (bounded, least recently used dropped
    first), so every env of an org with many envs gets its turn.
    """

    def __init__(self, max_orgs: int) -> None:
        self.max_orgs = max_orgs
        self.max_env_cursors = max(MIN_ENV_CURSORS, 4 * max_orgs)
        self._org_cursor: str | None = None
        self._env_cursors: OrderedDict[str, str] = OrderedDict()

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
        """The last org served: the next window starts after it (None: at the first)."""
        return self._org_cursor

    def pick_orgs(self, window: Sequence[str]) -> list[str]:
        """This tick's orgs: ``window``, at most :attr:`max_orgs` of it.

        ``window`` is what the buffer's ``org_window`` answers for :attr:`org_cursor` and
        :attr:`max_orgs`: the orgs in order from the one after the cursor, wrapping around.
        """
        return list(window[: self.max_orgs])

    def visited(self, org_id: str) -> None:
        """``org_id`` had its turn this tick: the next window starts after it."""
        self._org_cursor = org_id

    def keep_env(self, org_id: str, envs: Sequence[str], env_id: str) -> None:
        """``env_id`` (picked from ``envs``) got nothing, the budget being full: the org's next
        pick is that env again, not the one after it (which starved an env of an org whose
        visits alternated between a refill and a full budget)."""
        index = bisect.bisect_left(envs, env_id)
        if index == 0:
            self._env_cursors.pop(org_id, None)
        else:
            self._env_cursors[org_id] = envs[index - 1]

    def pick_env(self, org_id: str, envs: Sequence[str]) -> str:
        """The env of ``org_id`` that comes after the one picked last time, from ``envs`` (sorted)."""
        cursors = self._env_cursors
        last = cursors.get(org_id)
        index = 0 if last is None else bisect.bisect_right(envs, last) % len(envs)
        cursors[org_id] = envs[index]
        cursors.move_to_end(org_id)
        if len(cursors) > self.max_env_cursors:
            cursors.popitem(last=False)
        return envs[index]
