"""Reading and writing across slot groups (see :mod:`.keys`): the drainer's window of orgs over
every group, and batches split by group so each script touches one slot.

Every org lives in exactly one group, so the union of the groups' sorted sets of orgs is the one
sorted set of the single-group layout: a window read from every group after the same cursor and
merged is exactly the window the single-group layout gives, and the drainer's rotation (and so
its fairness) does not depend on how orgs fall into groups or how crowded a group is.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..models import BufferEntry
from .codec import boundary, texts
from .keys import KeySpace

__all__ = ["EMPTY_GROUP_RECHECK_S", "GroupWindows", "by_group", "placeholder_org"]

#: While no group has work (queued or in flight), a group found empty is read again after this
#: long, not on every tick: an idle tick then costs no command per group, and work accepted
#: meanwhile waits at most this long. While any group has work, every group is read on every
#: tick (in the same round trip per node): an org whose work arrives in a group found empty a
#: moment before gets its turn in the next rotation, not a second later, after the busy groups'
#: orgs drained on alone.
EMPTY_GROUP_RECHECK_S = 1.0


def by_group(keys: KeySpace, entries: Sequence[BufferEntry]) -> list[list[tuple[BufferEntry, KeySpace]]]:
    """``entries`` split by the group of their org, each group's in the order given."""
    groups: dict[int, list[tuple[BufferEntry, KeySpace]]] = {}
    for entry in entries:
        space = keys.group_of(entry.org_id)
        groups.setdefault(id(space), []).append((entry, space))
    return list(groups.values())


def placeholder_org(keys: KeySpace, group: KeySpace) -> str:
    """An org id that falls in ``group`` (for a script that must name some tenant of it)."""
    k = 0
    while keys.group_of(f"~{k}") is not group:
        k += 1
    return f"~{k}"


class GroupWindows:
    """The drainer's window of orgs over every group, in one pipelined round trip per node.

    While no group has an org or a lease, the groups found so are skipped for
    :data:`EMPTY_GROUP_RECHECK_S`; while any has, every group is read on every tick.
    """

    def __init__(self, groups: Sequence[KeySpace], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._groups = list(groups)
        self._clock = clock
        self._skip_until = [0.0] * len(self._groups)

    def org_window(self, client: Any, after: str | None, limit: int) -> list[str]:
        now = self._clock()
        probed = [i for i, until in enumerate(self._skip_until) if until <= now]
        if not probed:
            return []
        bound = after.encode("utf-8") if after is not None else None
        with boundary("org_window"):
            pipe = client.pipeline(transaction=False)
            for i in probed:
                orgs = self._groups[i].orgs
                if bound is None:
                    pipe.zrangebylex(orgs, "-", "+", 0, limit)
                else:
                    pipe.zrangebylex(orgs, b"(" + bound, "+", 0, limit)
                    pipe.zrangebylex(orgs, "-", b"[" + bound, 0, limit)
                pipe.exists(self._groups[i].leases)
            replies = pipe.execute()
        step = 2 if bound is None else 3
        later: list[list[str]] = []
        wrapped: list[list[str]] = []
        empty: list[int] = []
        for n, i in enumerate(probed):
            *parts, in_flight = replies[n * step : (n + 1) * step]
            if not any(parts) and not in_flight:
                empty.append(i)
            later.append(sorted(texts(parts[0])))
            if step == 3:
                wrapped.append(sorted(texts(parts[1])))
        if len(empty) == len(probed):  # idle: probe the empty groups about once a second
            for i in empty:
                self._skip_until[i] = now + EMPTY_GROUP_RECHECK_S
        else:  # busy: every group on the next tick
            self._skip_until = [0.0] * len(self._groups)
        merged = list(heapq.merge(*later))[:limit]
        if len(merged) < limit and wrapped:
            merged += list(heapq.merge(*wrapped))[: limit - len(merged)]
        return merged

    def forget_empty(self) -> None:
        """Read every group on the next window (after a wake-up, say)."""
        self._skip_until = [0.0] * len(self._groups)
