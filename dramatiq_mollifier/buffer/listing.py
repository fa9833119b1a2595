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

from collections.abc import Sequence

import redis

from ..models import TenantPage, TenantRow
from ..settings import MollifierSettings
from .codec import text
from .keys import KeySpace, parse_tenant_tag
from .rules import DEFAULT_WEIGHT, parse_field

__all__ = ["TENANT_SORTS", "dwell_snapshot", "oldest_ages", "tenant_page"]

#: The orders a page can be sorted by: org then env (default), depth (deepest first), oldest
#: (oldest queued entry first).
TENANT_SORTS = ("org", "depth", "oldest")

_Key = tuple[str, str]


def oldest_ages(
    client: redis.Redis, keys: KeySpace, tenants: Sequence[_Key], now_ms: int
) -> list[int | None]:
    """The age of the oldest QUEUED entry of each env (None: none queued, or its head reference
    outlived its entry); two pipelined round trips whatever the queues hold."""
    if not tenants:
        return []
    pipe = client.pipeline(transaction=False)
    for org, env in tenants:
        pipe.lindex(keys.tenant(org, env).queue, 0)
    heads = pipe.execute()
    pipe = client.pipeline(transaction=False)
    for head in heads:
        if head is not None:
            pipe.hget(keys.entry(text(head)), "created_at_ms")
    created = iter(pipe.execute())
    ages: list[int | None] = []
    for head in heads:
        at = next(created) if head is not None else None
        ages.append(max(0, now_ms - int(at)) if at is not None else None)
    return ages


def tenant_page(
    client: redis.Redis,
    keys: KeySpace,
    settings: MollifierSettings | None,
    *,
    offset: int,
    limit: int,
    filter: str | None,
    sort: str,
) -> TenantPage:
    """See :meth:`~dramatiq_mollifier.buffer.controls.TenantControls.tenants`."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.depth)
    pipe.hgetall(keys.paused)
    pipe.hgetall(keys.caps)
    pipe.hgetall(keys.weights)
    pipe.hgetall(keys.org_flags)
    pipe.time()
    depth_raw, paused_raw, caps_raw, weights_raw, flags_raw, (seconds, micros) = pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    pipe = client.pipeline(transaction=False)
    pipe.zrangebyscore(keys.tripped, now_ms, "+inf")
    (tripped_raw,) = pipe.execute()

    depths: dict[_Key, int] = {}
    for name, value in depth_raw.items():
        if name.startswith(b"env:") and int(value) > 0:
            depths[parse_tenant_tag(name[4:])] = int(value)
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
        ages = dict(zip(everything, oldest_ages(client, keys, everything, now_ms), strict=True))
        ordered = sorted(everything, key=lambda t: (ages[t] is None, -(ages[t] or 0), t))
    page = ordered[offset : offset + limit]
    if sort != "oldest":
        ages = dict(zip(page, oldest_ages(client, keys, page, now_ms), strict=True))

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
    client: redis.Redis, keys: KeySpace, top: int
) -> tuple[int, int, list[tuple[str, str, int]], int]:
    """``(depth, oldest age, the top oldest envs as (org, env, age), dead letters)``: what the
    fleet gauges report. Reads the depth counters, each env's head, and each dead-letter set's
    size; never the entries behind the heads."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.depth)
    pipe.smembers(keys.failed_orgs)
    pipe.time()
    depth_raw, failed_orgs, (seconds, micros) = pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    envs = sorted(parse_tenant_tag(name[4:]) for name, v in depth_raw.items() if name.startswith(b"env:"))
    ages = oldest_ages(client, keys, envs, now_ms)
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
    total = int(depth_raw.get(b"total", 0))
    return total, ranked[0][2] if ranked else 0, ranked[:top], dead_letters
