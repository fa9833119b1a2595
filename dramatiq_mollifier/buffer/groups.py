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

#: A group found without queued work and without entries in flight is read again after this
#: long, not on every tick: an idle tick then costs no command per group. Work accepted meanwhile
#: waits at most this long. A group with entries in flight (leased: being handled, or held out a
#: retry delay by some drainer) is read again on the next tick, since they may come back at any
#: moment, when a retry delay ends or a drainer gives them back.
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

    A group found with no org and no lease is skipped for :data:`EMPTY_GROUP_RECHECK_S`.
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
        for n, i in enumerate(probed):
            *parts, in_flight = replies[n * step : (n + 1) * step]
            if not any(parts) and not in_flight:
                self._skip_until[i] = now + EMPTY_GROUP_RECHECK_S
            later.append(sorted(texts(parts[0])))
            if step == 3:
                wrapped.append(sorted(texts(parts[1])))
        merged = list(heapq.merge(*later))[:limit]
        if len(merged) < limit and wrapped:
            merged += list(heapq.merge(*wrapped))[: limit - len(merged)]
        return merged

    def forget_empty(self) -> None:
        """Read every group on the next window (after a wake-up, say)."""
        self._skip_until = [0.0] * len(self._groups)
