"""The tenant listing behind ``TenantControls.tenants``: one page, without reading every entry.

One pipelined round trip reads what every row needs and Redis keeps counted already: the depth
counters (one field per env with work), the pause, cap and weight hashes, the runtime enrolment
flags, the tripped registry and the server time. Rows are built, filtered and sorted from that;
only then are the oldest entries read, for the page's envs alone (two pipelined round trips: each
queue's head id, then its ``created_at_ms``). Sorting by age reads the heads of every env instead,
still one per env, never the entries behind them. With 10,000 envs a page takes tens of
milliseconds (``benchmarks/bench_tenants.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import redis

from ..models import TenantPage, TenantRow
from ..settings import MollifierSettings
from .codec import text
from .keys import KeySpace, parse_tenant_tag
from .rules import DEFAULT_WEIGHT, parse_field
from .scripts import run, script_source

__all__ = ["TENANT_SORTS", "ListingScripts", "dwell_snapshot", "env_depths", "oldest_ages", "tenant_page"]

#: The orders a page can be sorted by: org then env (default), depth (deepest first), oldest
#: (oldest queued entry first).
TENANT_SORTS = ("org", "depth", "oldest")

_Key = tuple[str, str]
_DEPTH_HEADER = struct.Struct(">iiq")
_HEAD_HEADER = struct.Struct(">i")
# Queues (or entries) per script call: bounds one call's run time and argument list.
_CHUNK = 2_000


class ListingScripts:
    """The read-only scripts of the listing, registered on one client (no I/O)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.env_depths = client.register_script(script_source("env_depths"))
        self.queue_heads = client.register_script(script_source("queue_heads"))
        self.created_at = client.register_script(script_source("created_at"))


def env_depths(scripts: ListingScripts, keys: KeySpace) -> dict[_Key, int]:
    """Each env's QUEUED + DRAINING count, from the depth hash in one reply string (per group)."""
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
    scripts: ListingScripts, keys: KeySpace, tenants: Sequence[_Key], now_ms: int
) -> list[int | None]:
    """The age of the oldest QUEUED entry of each env (None: none queued, or its head reference
    outlived its entry): each queue's head id, then those entries' ``created_at_ms``, a few
    scripts whatever the queues hold, each answering one string."""
    by_group: dict[int, list[int]] = {}
    for i, (org, _) in enumerate(tenants):  # each script call reads one group (one slot)
        by_group.setdefault(id(keys.group_of(org)), []).append(i)
    found: dict[int, int | None] = {}
    for indexes in by_group.values():
        ages = _oldest_ages(scripts, keys, [tenants[i] for i in indexes], now_ms)
        found.update(zip(indexes, ages, strict=True))
    return [found[i] for i in range(len(tenants))]


def _oldest_ages(
    scripts: ListingScripts, keys: KeySpace, tenants: Sequence[_Key], now_ms: int
) -> list[int | None]:
    ages: list[int | None] = []
    for start in range(0, len(tenants), _CHUNK):
        chunk = tenants[start : start + _CHUNK]
        space = keys.group_of(chunk[0][0])
        queues = [keys.tenant(org, env).queue for org, env in chunk]
        frames: bytes = run(scripts.client, scripts.queue_heads, len(queues), *queues)
        heads: list[str | None] = []
        at = 0
        while at < len(frames):
            (length,) = _HEAD_HEADER.unpack_from(frames, at)
            at += _HEAD_HEADER.size
            heads.append(None if length < 0 else frames[at : (at := at + length)].decode())
        entries = [space.entry(head) for head in heads if head is not None]
        created = iter(
            struct.unpack(
                f">{len(entries)}q", run(scripts.client, scripts.created_at, len(entries), *entries)
            )
            if entries
            else ()
        )
        for head in heads:
            at_ms = next(created) if head is not None else -1
            ages.append(max(0, now_ms - at_ms) if at_ms >= 0 else None)
    return ages


def tenant_page(
    scripts: ListingScripts,
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
    depths = env_depths(scripts, keys)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.paused)
    pipe.hgetall(keys.caps)
    pipe.hgetall(keys.weights)
    pipe.hgetall(keys.org_flags)
    paused_raw, caps_raw, weights_raw, flags_raw = pipe.execute()
    now_ms = server_ms(client)
    pipe = client.pipeline(transaction=False)
    for group in keys.groups:
        pipe.zrangebyscore(group.tripped, now_ms, "+inf")
    tripped_raw = [member for members in pipe.execute() for member in members]
    paused = {t for name in paused_raw if (t := parse_field(name)) is not None}
    caps = {t: int(v) for name, v in caps_raw.items() if (t := parse_field(name)) is not None}
    weights = {text(org): int(w) for org, w in weights_raw.items()}
    tripped = set()
    for member in tripped_raw:
        try:
            tripped.add(parse_tenant_tag(member))
        except ValueError:
            continue
    tenants = set(depths)
    tenants.update((org, env) for org, env in (*paused, *caps) if env is not None)
    if filter:
        tenants = {(org, env) for org, env in tenants if filter in org or filter in env}

    ages: dict[_Key, int | None] = {}
    if sort == "org":
        ordered = sorted(tenants)
    elif sort == "depth":
        ordered = sorted(tenants, key=lambda t: (-depths.get(t, 0), t))
    else:
        everything = sorted(tenants)
        ages = dict(zip(everything, oldest_ages(scripts, keys, everything, now_ms), strict=True))
        ordered = sorted(everything, key=lambda t: (ages[t] is None, -(ages[t] or 0), t))
    page = ordered[offset : offset + limit]
    if sort != "oldest":
        ages = dict(zip(page, oldest_ages(scripts, keys, page, now_ms), strict=True))

    static = settings.org_enrolled_statically if settings is not None else None
    default_env_cap = settings.cap_per_env if settings is not None else None
    default_org_cap = settings.cap_per_org if settings is not None else None
    rows = [
        TenantRow(
            org_id=org,
            env_id=env,
            depth=depths.get((org, env), 0),
            oldest_age_ms=ages.get((org, env)),
            tripped=(org, env) in tripped,
            paused=(org, None) in paused or (org, env) in paused,
            cap=caps.get((org, env), default_env_cap),
            weight=weights.get(org, DEFAULT_WEIGHT),
            enrolled=None if static is None else static(org) or flags_raw.get(org.encode()) == b"true",
            org_cap=caps.get((org, None), default_org_cap),
        )
        for org, env in page
    ]
    return TenantPage(rows=rows, total=len(ordered), offset=offset, limit=limit)


def dwell_snapshot(
    scripts: ListingScripts, keys: KeySpace, top: int
) -> tuple[int, int, list[tuple[str, str, int]], int]:
    """``(depth, oldest age, the top oldest envs as (org, env, age), dead letters)``: what the
    fleet gauges report. Reads the depth counters, each env's head, and each dead-letter set's
    size; never the entries behind the heads."""
    client = scripts.client
    envs = sorted(env_depths(scripts, keys))
    pipe = client.pipeline(transaction=False)
    for group in keys.groups:
        pipe.hget(group.depth, "total")
        pipe.smembers(group.failed_orgs)
    replies = pipe.execute()
    total_raw = sum(int(n) for n in replies[0::2] if n is not None)
    failed_orgs = {org for members in replies[1::2] for org in members}
    now_ms = server_ms(client)
    ages = oldest_ages(scripts, keys, envs, now_ms)
    ranked = sorted(
        ((org, env, age) for (org, env), age in zip(envs, ages, strict=True) if age is not None),
        key=lambda item: -item[2],
    )
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
