"""The tenant listing behind ``TenantControls.tenants``: one page as a range read of an index.

The indexes (:mod:`.tenant_index`) list every env with buffered work by org and env, by depth and
by the age of its oldest queued entry, so a page of 50 is one range read plus one pipelined read
of its rows, whatever the number of tenants. Envs paused or capped without buffered work are not
in the indexes: they are merged in from the rule hashes (few). The rows' depths and ages are read
from the depth counters and the queue heads themselves, and an index entry that disagrees is
repaired and the page read again. A filter is a prefix of the org id (``acme``) or an org and a
prefix of its env id (``acme/pr``), a ``ZRANGEBYLEX`` range; sorted by depth or age, a filtered
page reads every env the filter matches (cheap for one org, a scan for a prefix matching all).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import redis

from ..models import TenantPage, TenantRow
from ..settings import MollifierSettings
from .codec import text
from .keys import NO_HEAD, KeySpace, parse_tenant_member, tenant_member
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
# Envs scored "not known" in the oldest index repaired per round trip before a page by age.
_DIRTY_BATCH = 1_000


def env_depths(scripts: IndexScripts, keys: KeySpace) -> dict[_Key, int]:
    """Each env's QUEUED + DRAINING count, from the depth hash in one reply string (a scan: for
    the gauges and the index's rebuild, not for a page)."""
    frames: bytes = run(scripts.client, scripts.env_depths, 1, keys.depth)
    depths: dict[_Key, int] = {}
    at, size, unpack = 0, _DEPTH_HEADER.size, _DEPTH_HEADER.unpack_from
    while at < len(frames):
        org_len, env_len, count = unpack(frames, at)
        at += size
        org = frames[at : (at := at + org_len)].decode()
        depths[org, frames[at : (at := at + env_len)].decode()] = count
    return depths


def oldest_ages(
    scripts: IndexScripts, keys: KeySpace, tenants: Sequence[_Key], now_ms: int
) -> list[int | None]:
    """The age of the oldest QUEUED entry of each env (None: none queued, or its head reference
    outlived its entry)."""
    return [
        None if at_ms is None else max(0, now_ms - at_ms) for at_ms in head_created_at(scripts, keys, tenants)
    ]


def _lex_range(filter: str | None) -> tuple[bytes, bytes]:
    """The ``ZRANGEBYLEX`` bounds of the members a filter matches."""
    if not filter:
        return b"-", b"+"
    org, slash, env = filter.partition("/")
    prefix = tenant_member(org, env) if slash else tenant_member(org, "")[:-2]
    # No member byte is 0xff (UTF-8 never has one): every member starting with prefix is below.
    return b"[" + prefix, b"(" + prefix + b"\xff"


def _matches(filter: str | None, org: str, env: str) -> bool:
    if not filter:
        return True
    org_part, slash, env_part = filter.partition("/")
    return org == org_part and env.startswith(env_part) if slash else org.startswith(filter)


def _parse(members: Sequence[bytes]) -> list[_Key]:
    return [parse_tenant_member(m) for m in members]


def _org_page(
    client: redis.Redis,
    keys: KeySpace,
    bounds: tuple[bytes, bytes],
    extras: list[_Key],
    *,
    offset: int,
    limit: int,
) -> tuple[list[_Key], int]:
    """A page in (org, env) order: the index's range, with ``extras`` merged in where they sort."""
    lo, hi = bounds
    pipe = client.pipeline(transaction=False)
    pipe.zlexcount(keys.index_tenants, lo, hi)
    for org, env in extras:
        pipe.zlexcount(keys.index_tenants, lo, b"(" + tenant_member(org, env))
    count, *ranks = pipe.execute()
    positions = [int(rank) + i for i, rank in enumerate(ranks)]
    before = sum(p < offset for p in positions)
    shown = [e for e, p in zip(extras, positions, strict=True) if offset <= p < offset + limit]
    wanted = limit - len(shown)
    start = offset - before
    listed: list[_Key] = []
    if wanted > 0 and start < int(count):
        got: Any = client.zrangebylex(keys.index_tenants, lo, hi, start, wanted)
        listed = _parse(got)
    return sorted([*listed, *shown]), int(count) + len(extras)


def _scored_page(
    client: redis.Redis,
    keys: KeySpace,
    bounds: tuple[bytes, bytes] | None,
    extras: list[_Key],
    *,
    index: str,
    offset: int,
    limit: int,
) -> tuple[list[_Key], int, dict[_Key, float]]:
    """A page by an index's score (ties by org and env), ``extras`` last in (org, env) order."""
    if bounds is not None:
        members: Any = client.zrangebylex(keys.index_tenants, *bounds)
        scores: Any = client.zmscore(index, members) if members else []
        ranked = sorted(
            (float(score), member) for member, score in zip(members, scores, strict=True) if score is not None
        )
        count = len(ranked)
        window = ranked[offset : offset + limit]
    else:
        pipe = client.pipeline(transaction=False)
        pipe.zcard(index)
        pipe.zrange(index, offset, offset + limit - 1, withscores=True)
        count, got = pipe.execute()
        count = int(count)
        window = [(float(score), member) for member, score in got]
    listed = {parse_tenant_member(bytes(member)): score for score, member in window}
    shown = extras[max(0, offset - count) : max(0, offset + limit - count)]
    return [*listed, *shown], count + len(extras), listed


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
    ensure_index(scripts, keys, lambda: env_depths(scripts, keys))
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.paused)
    pipe.hgetall(keys.caps)
    paused_raw, caps_raw = pipe.execute()
    paused = {t for name in paused_raw if (t := parse_field(name)) is not None}
    caps = {t: int(v) for name, v in caps_raw.items() if (t := parse_field(name)) is not None}
    ruled = sorted(
        {(org, env) for org, env in (*paused, *caps) if env is not None and _matches(filter, org, env)}
    )
    extras: list[_Key] = []
    if ruled:
        ruled_members: Any = [tenant_member(*t) for t in ruled]
        listed_scores: Any = client.zmscore(keys.index_tenants, ruled_members)
        extras = [t for t, score in zip(ruled, listed_scores, strict=True) if score is None]
    if sort == "oldest":
        _repair_unknown_heads(scripts, keys)
    bounds = _lex_range(filter)
    for attempt in range(_ATTEMPTS):
        scores: dict[_Key, float] = {}
        if sort == "org":
            page, total = _org_page(client, keys, bounds, extras, offset=offset, limit=limit)
        else:
            page, total, scores = _scored_page(
                client,
                keys,
                bounds if filter else None,
                extras,
                index=keys.index_depth if sort == "depth" else keys.index_oldest,
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


def _repair_unknown_heads(scripts: IndexScripts, keys: KeySpace) -> None:
    """Reindex every env scored 0 ("not known") in the oldest index: they sort first."""
    for _ in range(100):
        members: Any = scripts.client.zrangebyscore(keys.index_oldest, 0, 0, 0, _DIRTY_BATCH)
        if not members:
            return
        reindex(scripts, keys, _parse(members))


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
    pipe = client.pipeline(transaction=False)
    pipe.time()
    if page:
        pipe.hmget(keys.depth, [t.depth_env_field for t in tenants])
        pipe.zmscore(keys.tripped, [t.tripped_member for t in tenants])
        pipe.hmget(keys.weights, orgs)
        pipe.hmget(keys.org_flags, orgs)
    (seconds, micros), *rest = pipe.execute()
    truth.now_ms = int(seconds) * 1000 + int(micros) // 1000
    if not page:
        return truth
    counts, deadlines, weights, flags = rest
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
    pipe.hget(keys.depth, "total")
    pipe.smembers(keys.failed_orgs)
    total_raw, failed_orgs = pipe.execute()
    orgs = sorted(text(org) for org in failed_orgs)
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
