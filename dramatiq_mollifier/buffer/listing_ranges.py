"""The tenant listing's range reads: one page of the indexes, merged over the slot groups.

Without slot groups a page is one range read of the key space's index (``ZRANGEBYLEX`` by org and
env, ``ZRANGE`` by depth or age, from the page's offset). With slot groups every group has its own
indexes (``tenant_index.py``): each group's first ``offset + limit`` members are read, every
group in one pipelined round trip per node, then merged in the index's order (score, then member
bytes: the order one index would give) and the page sliced from the merge. The envs paused or
capped without buffered work (``extras``, few) are merged in too.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from itertools import islice
from typing import Any

from .keys import KeySpace, parse_tenant_member, tenant_member
from .tenant_index import IndexScripts, reindex

__all__ = ["lex_range", "matches", "org_page", "parse_members", "repair_unknown_heads", "scored_page"]

_Key = tuple[str, str]
# Envs scored "not known" in the oldest index repaired per round trip before a page by age.
_DIRTY_BATCH = 1_000


def lex_range(filter: str | None) -> tuple[bytes, bytes]:
    """The ``ZRANGEBYLEX`` bounds of the members a filter matches."""
    if not filter:
        return b"-", b"+"
    org, slash, env = filter.partition("/")
    prefix = tenant_member(org, env) if slash else tenant_member(org, "")[:-2]
    # No member byte is 0xff (UTF-8 never has one): every member starting with prefix is below.
    return b"[" + prefix, b"(" + prefix + b"\xff"


def matches(filter: str | None, org: str, env: str) -> bool:
    """Whether the env is one the filter keeps (as :func:`lex_range` selects it)."""
    if not filter:
        return True
    org_part, slash, env_part = filter.partition("/")
    return org == org_part and env.startswith(env_part) if slash else org.startswith(filter)


def parse_members(members: Sequence[bytes]) -> list[_Key]:
    """The ``(org, env)`` of index members."""
    return [parse_tenant_member(bytes(m)) for m in members]


def org_page(
    client: Any,
    keys: KeySpace,
    bounds: tuple[bytes, bytes],
    extras: list[_Key],
    *,
    offset: int,
    limit: int,
) -> tuple[list[_Key], int]:
    """A page in (org, env) order: the indexes' ranges, with ``extras`` merged in where they
    sort; and how many envs the filter matches in all."""
    lo, hi = bounds
    groups = keys.groups
    if len(groups) > 1:
        pipe = client.pipeline(transaction=False)
        for group in groups:
            pipe.zlexcount(group.index_tenants, lo, hi)
            pipe.zrangebylex(group.index_tenants, lo, hi, 0, offset + limit)
        replies = pipe.execute()
        ranges = [[bytes(m) for m in got] for got in replies[1::2]]
        merged = heapq.merge(*ranges, sorted(tenant_member(*e) for e in extras))
        page = parse_members(list(islice(merged, offset, offset + limit)))
        return page, sum(int(n) for n in replies[0::2]) + len(extras)
    index = groups[0].index_tenants
    pipe = client.pipeline(transaction=False)
    pipe.zlexcount(index, lo, hi)
    for org, env in extras:
        pipe.zlexcount(index, lo, b"(" + tenant_member(org, env))
    count, *ranks = pipe.execute()
    positions = [int(rank) + i for i, rank in enumerate(ranks)]
    before = sum(p < offset for p in positions)
    shown = [e for e, p in zip(extras, positions, strict=True) if offset <= p < offset + limit]
    wanted = limit - len(shown)
    start = offset - before
    listed: list[_Key] = []
    if wanted > 0 and start < int(count):
        listed = parse_members(client.zrangebylex(index, lo, hi, start, wanted))
    return sorted([*listed, *shown]), int(count) + len(extras)


def scored_page(
    client: Any,
    keys: KeySpace,
    bounds: tuple[bytes, bytes] | None,
    extras: list[_Key],
    *,
    index: str,
    offset: int,
    limit: int,
) -> tuple[list[_Key], int, dict[_Key, float]]:
    """A page by an index's score (``index``: ``"index_depth"`` or ``"index_oldest"``, the
    :class:`KeySpace` attribute), ties by org and env, ``extras`` last in (org, env) order; the
    count; the listed envs' scores."""
    groups = keys.groups
    if bounds is not None:  # a filter: every matching member, scored
        pipe = client.pipeline(transaction=False)
        for group in groups:
            pipe.zrangebylex(group.index_tenants, *bounds)
        found = [[bytes(m) for m in members] for members in pipe.execute()]
        pipe = client.pipeline(transaction=False)
        for group, members in zip(groups, found, strict=True):
            if members:
                pipe.zmscore(getattr(group, index), members)
        scores = iter(pipe.execute())
        ranked = sorted(
            (float(score), member)
            for members in found
            if members
            for member, score in zip(members, next(scores), strict=True)
            if score is not None
        )
        count = len(ranked)
        window = ranked[offset : offset + limit]
    else:
        # One group: the page's own range; several: each group's first offset + limit, merged.
        start = offset if len(groups) == 1 else 0
        pipe = client.pipeline(transaction=False)
        for group in groups:
            pipe.zcard(getattr(group, index))
            pipe.zrange(getattr(group, index), start, offset + limit - 1, withscores=True)
        replies = pipe.execute()
        count = sum(int(n) for n in replies[0::2])
        ranges = [[(float(score), bytes(member)) for member, score in got] for got in replies[1::2]]
        window = list(islice(heapq.merge(*ranges), offset - start, offset - start + limit))
    listed = {parse_tenant_member(member): score for score, member in window}
    shown = extras[max(0, offset - count) : max(0, offset + limit - count)]
    return [*listed, *shown], count + len(extras), listed


def repair_unknown_heads(scripts: IndexScripts, keys: KeySpace) -> None:
    """Reindex every env scored 0 ("not known") in an oldest index: they sort first. Every
    group's are read in one pipelined round trip per node."""
    for _ in range(100):
        pipe = scripts.client.pipeline(transaction=False)
        for group in keys.groups:
            pipe.zrangebyscore(group.index_oldest, 0, 0, 0, _DIRTY_BATCH)
        unknown = [t for members in pipe.execute() for t in parse_members(members)]
        if not unknown:
            return
        reindex(scripts, keys, unknown)
