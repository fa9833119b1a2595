"""What the dashboard's pages read: the overview's numbers, a page of the tenant table, a tenant.

Everything here reads through the same API as the command line (:class:`BufferAdmin`,
:class:`OrgFlags`) and costs a bounded number of round trips whatever the number of tenants:
the tenant table reads the depth hash once (``HGETALL``: every env's count in one reply),
sorts and filters it in the process, and reads the oldest age of the page's rows only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Literal

import redis

from ..buffer import MollifierBuffer
from ..buffer.codec import text
from ..gate.flags import OrgFlags
from ..models import BufferEntry, Tenant, TenantPage, TenantRow
from ..settings import MollifierSettings

__all__ = [
    "SORT_KEYS",
    "Overview",
    "TenantDetail",
    "now_ms",
    "overview",
    "tenant_detail",
    "tenant_page",
]

#: The orders of the tenant table, as ``TenantControls.tenants`` has them: org then env, depth
#: (deepest first), oldest (oldest queued entry first).
SORT_KEYS = ("org", "depth", "oldest")
SortKey = Literal["org", "depth", "oldest"]
_ENV_FIELD = b"env:"


@dataclass(frozen=True)
class Overview:
    """The overview's numbers."""

    depth: int
    orgs: int
    tripped: list[Tenant]
    dead_letters: int
    outstanding: int
    max_outstanding: int
    rate_limit_per_s: int
    rate_tokens: float | None
    broker_depth: int | None
    breaker_open: bool | None


@dataclass(frozen=True)
class TenantDetail:
    """An org's page: its envs, its dead letters, its enrolment."""

    org_id: str
    depth: int
    envs: list[TenantRow]
    dead_letters: list[BufferEntry] = field(default_factory=list)
    enrolled: bool = False
    flag: bool | None = None


def now_ms(client: redis.Redis) -> int:
    """The Redis server's clock, in milliseconds (the buffer's times are the server's)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _env_depths(buffer: MollifierBuffer, needle: str) -> dict[tuple[str, str], int]:
    """Every env with buffered work whose org or env contains ``needle`` (lower case), and its
    count, from one read of the depth hash.

    ``HGETALL`` rather than a script that would filter in the server: Redis builds the reply
    in a few milliseconds, where a Lua loop over 10,000 envs held the server (and every send)
    for tens. Decoding the reply is most of a page's time: hiredis, when installed, cuts it
    threefold (see benchmarks/bench_dashboard.py).
    """
    raw: dict[bytes, bytes] = buffer.client.hgetall(buffer.keys.depth)  # type: ignore[assignment]
    envs: dict[tuple[str, str], int] = {}
    start = len(_ENV_FIELD)
    for name, value in raw.items():
        # parse_tenant_tag inlined: this loop runs once per env, 10,000 times for 10,000 envs.
        if name[:start] == _ENV_FIELD and value != b"0":
            length, _, rest = name[start:].partition(b":")
            size = int(length)
            org, env = rest[:size].decode(), rest[size + 1 :].decode()
            if not needle or needle in org.lower() or needle in env.lower():
                envs[org, env] = int(value)
    return envs


def _enrolled(settings: MollifierSettings, flags: dict[str, bool]) -> Callable[[str], bool]:
    def enrolled(org: str) -> bool:
        return settings.org_enrolled_statically(org) or flags.get(org, False)

    return enrolled


def _dead_letter_count(buffer: MollifierBuffer) -> int:
    """FAILED ids over every env, in two pipelined round trips (no entry is read)."""
    client, keys = buffer.client, buffer.keys
    orgs = sorted(text(org) for org in client.smembers(keys.failed_orgs))
    pipe = client.pipeline(transaction=False)
    for org in orgs:
        pipe.smembers(keys.failed_envs(org))
    pairs = [(org, text(env)) for org, envs in zip(orgs, pipe.execute(), strict=True) for env in envs]
    pipe = client.pipeline(transaction=False)
    for org, env in pairs:
        pipe.zcard(keys.tenant(org, env).failed)
    return sum(int(count) for count in pipe.execute())


def overview(
    buffer: MollifierBuffer,
    settings: MollifierSettings,
    *,
    broker_depth: Callable[[], int] | None = None,
    breaker_open: Callable[[], bool] | None = None,
) -> Overview:
    """The overview's numbers: depth, tripped envs, dead letters, the drain budget in use."""
    client, keys = buffer.client, buffer.keys
    total = buffer.depth()
    pipe = client.pipeline(transaction=False)
    pipe.zcount(keys.outstanding, now_ms(client), "+inf")
    pipe.hget(keys.drain_rate, "tokens")
    outstanding, tokens = pipe.execute()
    return Overview(
        depth=total,
        orgs=int(client.zcard(keys.orgs)),
        tripped=buffer.tripped(),
        dead_letters=_dead_letter_count(buffer),
        outstanding=int(outstanding),
        max_outstanding=settings.drain_max_outstanding,
        rate_limit_per_s=settings.drain_rate_limit_per_s,
        rate_tokens=float(tokens) if tokens is not None else None,
        broker_depth=broker_depth() if broker_depth is not None else None,
        breaker_open=breaker_open() if breaker_open is not None else None,
    )


def oldest_ages(buffer: MollifierBuffer, tenants: Sequence[tuple[str, str]]) -> list[int | None]:
    """The age of each env's oldest QUEUED entry, in ms (None when it has none).

    Two pipelined round trips for the heads of the queues; an env whose head is a stale reference
    (an expired or moved entry) falls back to :meth:`BufferAdmin.oldest_created_at`.
    """
    client, keys = buffer.client, buffer.keys
    now = now_ms(client)
    pipe = client.pipeline(transaction=False)
    for org, env in tenants:
        pipe.lindex(keys.tenant(org, env).queue, 0)
    heads = pipe.execute()
    pipe = client.pipeline(transaction=False)
    for head in heads:
        pipe.hmget(keys.entry(text(head)) if head is not None else keys.entry(""), "status", "created_at_ms")
    ages: list[int | None] = []
    for (org, env), head, (status, created) in zip(tenants, heads, pipe.execute(), strict=True):
        if head is None:
            ages.append(None)
        elif status == b"QUEUED" and created is not None:
            ages.append(max(0, now - int(created)))
        else:
            oldest = buffer.oldest_created_at(org, env)
            ages.append(None if oldest is None else max(0, now - int(oldest.timestamp() * 1000)))
    return ages


def tenant_page(
    buffer: MollifierBuffer,
    settings: MollifierSettings,
    *,
    offset: int = 0,
    limit: int = 50,
    filter_text: str = "",
    sort: SortKey = "org",
) -> TenantPage:
    """One page of the tenant table, read from the buffer's counters alone: every env with
    buffered work or a live trip marker (the listing ``TenantControls.tenants`` gives when the
    per-tenant controls are there; see :mod:`.controls`). Pause, cap and weight are left at
    "none" here.

    ``filter_text`` keeps the envs whose org or env id contains it (case-insensitive).
    """
    needle = filter_text.strip().lower()
    envs = _env_depths(buffer, needle)
    tripped = set(buffer.tripped())
    for org, env in tripped:
        if not needle or needle in org.lower() or needle in env.lower():
            envs.setdefault((org, env), 0)
    items = [(org, env, depth) for (org, env), depth in envs.items()]
    ages: dict[tuple[str, str], int | None] = {}
    items.sort()  # org, then env; the sorts below are stable, so this breaks their ties
    if sort == "oldest":
        ages = dict(zip(envs, oldest_ages(buffer, list(envs)), strict=True))
        items.sort(key=lambda i: ages[i[0], i[1]] or -1, reverse=True)
    elif sort == "depth":
        items.sort(key=itemgetter(2), reverse=True)
    chosen = items[offset : offset + limit]
    if sort != "oldest":
        ages = dict(
            zip(
                [(o, e) for o, e, _ in chosen],
                oldest_ages(buffer, [(o, e) for o, e, _ in chosen]),
                strict=True,
            )
        )
    enrolled = _enrolled(settings, OrgFlags(buffer.client, key_prefix=buffer.key_prefix).all())
    rows = [
        TenantRow(
            org_id=org,
            env_id=env,
            depth=depth,
            oldest_age_ms=ages[org, env],
            tripped=Tenant(org, env) in tripped,
            paused=False,
            cap=None,
            weight=1,
            enrolled=enrolled(org),
        )
        for org, env, depth in chosen
    ]
    return TenantPage(rows=rows, total=len(items), offset=offset, limit=limit)


def tenant_detail(
    buffer: MollifierBuffer,
    settings: MollifierSettings,
    org_id: str,
    *,
    dead_letter_limit: int = 100,
) -> TenantDetail:
    """An org's envs (buffered, tripped or with dead letters) and its first dead letters."""
    tripped = {t.env_id for t in buffer.tripped() if t.org_id == org_id}
    envs = set(buffer.envs(org_id)) | tripped
    envs.update(text(env) for env in buffer.client.smembers(buffer.keys.failed_envs(org_id)))
    ordered = sorted(envs)
    fields = [buffer.keys.tenant(org_id, env).depth_env_field for env in ordered]
    counts = buffer.client.hmget(buffer.keys.depth, fields) if fields else []
    depths = {(org_id, env): int(count or 0) for env, count in zip(ordered, counts, strict=True)}
    ages = oldest_ages(buffer, [(org_id, env) for env in ordered])
    flags = OrgFlags(buffer.client, key_prefix=buffer.key_prefix).all()
    enrolled = _enrolled(settings, flags)(org_id)
    rows = [
        TenantRow(
            org_id=org_id,
            env_id=env,
            depth=depths.get((org_id, env), 0),
            oldest_age_ms=age,
            tripped=env in tripped,
            paused=False,
            cap=None,
            weight=1,
            enrolled=enrolled,
        )
        for env, age in zip(ordered, ages, strict=True)
    ]
    return TenantDetail(
        org_id=org_id,
        depth=buffer.depth(org_id),
        envs=rows,
        dead_letters=buffer.failed(org_id)[:dead_letter_limit],
        enrolled=enrolled,
        flag=flags.get(org_id),
    )


def entry_summary(entry: BufferEntry, now: int) -> dict[str, Any]:
    """What the lookup page shows of an entry (never its payload)."""
    code, message = entry.last_error or (None, None)
    return {
        "message_id": entry.message_id,
        "org_id": entry.org_id,
        "env_id": entry.env_id,
        "status": entry.status.value,
        "attempts": entry.attempts,
        "created_at": entry.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "age_ms": max(0, now - int(entry.created_at.timestamp() * 1000)),
        "error_code": code,
        "error_message": message,
        "payload_bytes": len(entry.payload),
        "mode": entry.mode,
    }
