"""The tenant listing behind ``TenantControls.tenants``: one page as a range read of an index.

The indexes (:mod:`.tenant_index`) list every env with buffered work by org and env, by depth and
by the age of its oldest queued entry, so a page of 50 is one range read plus one pipelined read
of its rows, whatever the number of tenants. Envs paused or capped without buffered work are not
in the indexes: they are merged in from the rule hashes (few). The rows' depths and ages are read
from the depth counters and the queue heads themselves, and an index entry that disagrees is
repaired and the page read again. A filter is a prefix of the org id (``acme``) or an org and a
prefix of its env id (``acme/pr``), a ``ZRANGEBYLEX`` range; sorted by depth or age, a filtered
page reads every env the filter matches (cheap for one org, a scan for a prefix matching all).

With slot groups each group has its own indexes: a page is a merge of every group's range
(``listing_ranges.py``), and a page's rows are read group by group in one pipelined round trip
per node.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from ..models import TenantPage, TenantRow
from ..settings import MollifierSettings
from .clients import is_cluster
from .codec import text
from .keys import NO_HEAD, KeySpace, tenant_member
from .listing_ranges import lex_range, matches, org_page, repair_unknown_heads, scored_page
from .rules import DEFAULT_WEIGHT, parse_field
from .scripts import run
from .tenant_index import IndexScripts, ensure_index, head_created_at, reindex

__all__ = ["TENANT_SORTS", "ListingScripts", "dwell_snapshot", "env_depths", "oldest_ages", "tenant_page"]

#: The orders a page can be sorted by: org then env (default), depth (deepest first), oldest
#: (oldest queued entry first; envs with nothing queued last).
TENANT_SORTS = ("org", "depth", "oldest")

#: The listing's scripts (the index's): registered once per client.
ListingScripts = IndexScripts

_Key = tuple[str, str]
_DEPTH_HEADER = struct.Struct(">iiq")
# Reads of a page whose rows disagree with the truth (repaired in between) before it is shown.
_ATTEMPTS = 3


def env_depths(scripts: IndexScripts, keys: KeySpace) -> dict[_Key, int]:
    """Each env's QUEUED + DRAINING count, from the depth hash in one reply string per group (a
    scan: for the gauges and the index's rebuild, not for a page). ``keys`` may be one group's
    key space: then that group's envs alone."""
    depths: dict[_Key, int] = {}
    for group in keys.groups:
        frames: bytes = run(scripts.client, scripts.env_depths, 1, group.depth)
        at, size, unpack = 0, _DEPTH_HEADER.size, _DEPTH_HEADER.unpack_from
        while at < len(frames):
            org_len, env_len, count = unpack(frames, at)
            at += size
            org = frames[at : (at := at + org_len)].decode()
            depths[org, frames[at : (at := at + env_len)].decode()] = count
    return depths


def server_ms(client: Any) -> int:
    """Redis server time in ms (a command of its own: a cluster pipeline refuses ``TIME``)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def oldest_ages(
    scripts: IndexScripts, keys: KeySpace, tenants: Sequence[_Key], now_ms: int
) -> list[int | None]:
    """The age of the oldest QUEUED entry of each env (None: none queued, or its head reference
    outlived its entry)."""
    return [
        None if at_ms is None else max(0, now_ms - at_ms) for at_ms in head_created_at(scripts, keys, tenants)
    ]


def tenant_page(
    scripts: IndexScripts,
    keys: KeySpace,
    settings: MollifierSettings | None,
    *,
    offset: int,
    limit: int,
    filter: str | None,
    sort: str,
) -> TenantPage:
    """See :meth:`~dramatiq_mollifier.buffer.controls.TenantControls.tenants`."""
    client = scripts.client
    ensure_index(scripts, keys, lambda group: env_depths(scripts, group))
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.paused)
    pipe.hgetall(keys.caps)
    paused_raw, caps_raw = pipe.execute()
    paused = {t for name in paused_raw if (t := parse_field(name)) is not None}
    caps = {t: int(v) for name, v in caps_raw.items() if (t := parse_field(name)) is not None}
    ruled = sorted(
        {(org, env) for org, env in (*paused, *caps) if env is not None and matches(filter, org, env)}
    )
    extras: list[_Key] = []
    if ruled:  # those without buffered work: not in their group's index
        pipe = client.pipeline(transaction=False)
        for org, env in ruled:
            pipe.zscore(keys.group_of(org).index_tenants, tenant_member(org, env))
        extras = [t for t, score in zip(ruled, pipe.execute(), strict=True) if score is None]
    if sort == "oldest":
        repair_unknown_heads(scripts, keys)
    bounds = lex_range(filter)
    for attempt in range(_ATTEMPTS):
        scores: dict[_Key, float] = {}
        if sort == "org":
            page, total = org_page(client, keys, bounds, extras, offset=offset, limit=limit)
        else:
            page, total, scores = scored_page(
                client,
                keys,
                bounds if filter else None,
                extras,
                index="index_depth" if sort == "depth" else "index_oldest",
                offset=offset,
                limit=limit,
            )
        truth = _read_rows(scripts, keys, page)
        extra_set = set(extras)
        stale = [
            t
            for t, depth, created in zip(page, truth.depths, truth.created, strict=True)
            if t not in extra_set
            and (
                depth <= 0
                or (sort == "depth" and scores.get(t) != -depth)
                or (sort == "oldest" and scores.get(t) != (NO_HEAD if created is None else created))
            )
        ]
        if not stale or attempt == _ATTEMPTS - 1:
            break
        reindex(scripts, keys, stale)
    return TenantPage(
        rows=_rows(page, truth, settings, paused, caps), total=total, offset=offset, limit=limit
    )


class _Truth:
    """What the rows show, read from the counters, the queues and the rule hashes."""

    __slots__ = ("created", "depths", "flags", "now_ms", "tripped", "weights")

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.created: list[int | None] = []
        self.tripped: list[bool] = []
        self.weights: dict[str, int] = {}
        self.flags: dict[str, bool] = {}
        self.now_ms = 0


def _read_rows(scripts: IndexScripts, keys: KeySpace, page: list[_Key]) -> _Truth:
    client = scripts.client
    truth = _Truth()
    orgs = sorted({org for org, _ in page})
    tenants = [keys.tenant(org, env) for org, env in page]
    groups: dict[int, tuple[KeySpace, list[int]]] = {}
    for i, t in enumerate(tenants):  # each group's counters and tripped registry: one slot each
        groups.setdefault(id(t.space), (t.space, []))[1].append(i)
    cluster = is_cluster(client)
    pipe = client.pipeline(transaction=False)
    if not cluster:
        pipe.time()
    if page:
        for space, positions in groups.values():
            pipe.hmget(space.depth, [tenants[i].depth_env_field for i in positions])
            pipe.zmscore(space.tripped, [tenants[i].tripped_member for i in positions])
        pipe.hmget(keys.weights, orgs)
        pipe.hmget(keys.org_flags, orgs)
    replies = pipe.execute()
    if cluster:  # a cluster pipeline refuses TIME
        truth.now_ms = server_ms(client)
    else:
        (seconds, micros), *replies = replies
        truth.now_ms = int(seconds) * 1000 + int(micros) // 1000
    if not page:
        return truth
    *per_group, weights, flags = replies
    counts: list[Any] = [None] * len(page)
    deadlines: list[Any] = [None] * len(page)
    for (_, positions), group_counts, group_deadlines in zip(
        groups.values(), per_group[0::2], per_group[1::2], strict=True
    ):
        for i, count, deadline in zip(positions, group_counts, group_deadlines, strict=True):
            counts[i], deadlines[i] = count, deadline
    truth.depths = [int(c or 0) for c in counts]
    truth.tripped = [d is not None and float(d) >= truth.now_ms for d in deadlines]
    truth.weights = {org: int(w) for org, w in zip(orgs, weights, strict=True) if w is not None}
    truth.flags = {org: f == b"true" for org, f in zip(orgs, flags, strict=True) if f is not None}
    truth.created = head_created_at(scripts, keys, page)
    return truth


def _rows(
    page: list[_Key],
    truth: _Truth,
    settings: MollifierSettings | None,
    paused: set[tuple[str, str | None]],
    caps: dict[tuple[str, str | None], int],
) -> list[TenantRow]:
    static = settings.org_enrolled_statically if settings is not None else None
    default_env_cap = settings.cap_per_env if settings is not None else None
    default_org_cap = settings.cap_per_org if settings is not None else None
    return [
        TenantRow(
            org_id=org,
            env_id=env,
            depth=max(depth, 0),
            oldest_age_ms=None if created is None else max(0, truth.now_ms - created),
            tripped=tripped,
            paused=(org, None) in paused or (org, env) in paused,
            cap=caps.get((org, env), default_env_cap),
            weight=truth.weights.get(org, DEFAULT_WEIGHT),
            enrolled=None if static is None else static(org) or truth.flags.get(org, False),
            org_cap=caps.get((org, None), default_org_cap),
        )
        for (org, env), depth, created, tripped in zip(
            page, truth.depths, truth.created, truth.tripped, strict=True
        )
    ]


def dwell_snapshot(
    scripts: IndexScripts, keys: KeySpace, top: int
) -> tuple[int, int, list[tuple[str, str, int]], int]:
    """``(depth, oldest age, the top oldest envs as (org, env, age), dead letters)``: what the
    fleet gauges report. The first page by age of the listing (a range read of the oldest index,
    exact as the listing's first page is), the depth counter, each dead-letter set's size."""
    client = scripts.client
    page = tenant_page(scripts, keys, None, offset=0, limit=top, filter=None, sort="oldest")
    ranked = [(r.org_id, r.env_id, r.oldest_age_ms) for r in page.rows if r.oldest_age_ms is not None]
    pipe = client.pipeline(transaction=False)
    for group in keys.groups:
        pipe.hget(group.depth, "total")
        pipe.smembers(group.failed_orgs)
    replies = pipe.execute()
    total_raw = sum(int(n) for n in replies[0::2] if n is not None)
    orgs = sorted({text(org) for members in replies[1::2] for org in members})
    pipe = client.pipeline(transaction=False)
    for org in orgs:
        pipe.smembers(keys.failed_envs(org))
    failed_envs = [
        (org, text(env)) for org, members in zip(orgs, pipe.execute(), strict=True) for env in members
    ]
    pipe = client.pipeline(transaction=False)
    for org, env in failed_envs:
        pipe.zcard(keys.tenant(org, env).failed)
    dead_letters = sum(int(n) for n in pipe.execute()) if failed_envs else 0
    total = int(total_raw or 0)
    return total, ranked[0][2] if ranked else 0, ranked[:top], dead_letters
