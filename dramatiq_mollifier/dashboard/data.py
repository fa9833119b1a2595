"""What the dashboard's pages read, beyond what :class:`TenantControls` answers directly.

Everything goes through the API the command line uses (:class:`BufferAdmin`,
:class:`TenantControls`, :class:`OrgFlags`) and costs a bounded number of round trips whatever
the number of tenants: the overview reads counters, never the per-env depths; an org's page reads
that org's envs only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from ..buffer import MollifierBuffer
from ..buffer.codec import text
from ..buffer.controls import TenantControls
from ..buffer.listing import ListingScripts, oldest_ages
from ..gate.flags import OrgFlags
from ..models import BufferEntry, MessageLookup, Tenant, TenantRow
from ..settings import MollifierSettings

__all__ = [
    "Overview",
    "TenantDetail",
    "entry_summary",
    "lookup_summary",
    "now_ms",
    "overview",
    "tenant_detail",
]

#: The lookup's states as the pages name them (the buffer's entry statuses).
_STATUS = {"queued": "QUEUED", "draining": "DRAINING", "dead_lettered": "FAILED"}


@dataclass(frozen=True)
class Overview:
    """The overview's numbers."""

    depth: int
    orgs: int
    tripped: list[Tenant]
    paused: int
    dead_letters: int
    outstanding: int
    max_outstanding: int
    rate_limit_per_s: int
    broker_depth: int | None
    breaker_open: bool | None


@dataclass(frozen=True)
class TenantDetail:
    """An org's page: its envs, its dead letters, its enrolment."""

    org_id: str
    depth: int
    envs: list[TenantRow]
    dead_letters: list[BufferEntry] = field(default_factory=list)
    dead_letter_total: int = 0
    enrolled: bool = False
    flag: bool | None = None
    paused: bool = False
    weight: int = 1


def now_ms(client: redis.Redis) -> int:
    """The Redis server's clock, in milliseconds (the buffer's times are the server's)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def overview(
    buffer: MollifierBuffer,
    controls: TenantControls,
    settings: MollifierSettings,
    *,
    broker_depth: int | None = None,
    breaker_open: bool | None = None,
) -> Overview:
    """The overview's numbers: depth, tripped envs, dead letters, the drain budget in use."""
    client, keys = buffer.client, buffer.keys
    outstanding = client.zcount(keys.outstanding, now_ms(client), "+inf")
    pipe = client.pipeline(transaction=False)
    for group in keys.groups:  # one group without slot groups
        pipe.zcard(group.orgs)
    orgs = sum(int(n) for n in pipe.execute())
    return Overview(
        depth=buffer.depth(),
        orgs=int(orgs),
        tripped=buffer.tripped(),
        paused=len(controls.paused()),
        dead_letters=sum(buffer.failed_counts().values()),
        outstanding=int(outstanding),
        max_outstanding=settings.drain_max_outstanding,
        rate_limit_per_s=settings.drain_rate_limit_per_s,
        broker_depth=broker_depth,
        breaker_open=breaker_open,
    )


def tenant_detail(
    buffer: MollifierBuffer,
    controls: TenantControls,
    listing: ListingScripts,
    settings: MollifierSettings,
    org_id: str,
    *,
    dead_letter_limit: int = 100,
) -> TenantDetail:
    """An org's envs (buffered, tripped, paused, capped or with dead letters) and its oldest
    dead letters, with the rules in force for each env."""
    client, keys = buffer.client, buffer.keys
    tripped = {t.env_id for t in buffer.tripped() if t.org_id == org_id}
    paused = {p.env_id for p in controls.paused() if p.org_id == org_id}
    caps = {c.env_id: c.limit for c in controls.caps() if c.org_id == org_id}
    weight = controls.weights().get(org_id, 1)
    envs = set(buffer.envs(org_id)) | tripped
    envs.update(env for env in (*paused, *caps) if env is not None)
    envs.update(text(env) for env in client.smembers(keys.failed_envs(org_id)))
    ordered = sorted(envs)
    fields = [keys.tenant(org_id, env).depth_env_field for env in ordered]
    counts = client.hmget(keys.group_of(org_id).depth, fields) if fields else []
    ages = oldest_ages(listing, keys, [(org_id, env) for env in ordered], now_ms(client))
    flags = OrgFlags(client, key_prefix=buffer.key_prefix).all()
    enrolled = settings.org_enrolled_statically(org_id) or flags.get(org_id, False)
    org_cap = caps.get(None, settings.cap_per_org)
    rows = [
        TenantRow(
            org_id=org_id,
            env_id=env,
            depth=int(count or 0),
            oldest_age_ms=age,
            tripped=env in tripped,
            paused=None in paused or env in paused,
            cap=caps.get(env, settings.cap_per_env),
            weight=weight,
            enrolled=enrolled,
            org_cap=org_cap,
        )
        for env, count, age in zip(ordered, counts, ages, strict=True)
    ]
    page = buffer.failed_page(org_id, limit=dead_letter_limit)
    return TenantDetail(
        org_id=org_id,
        depth=buffer.depth(org_id),
        envs=rows,
        dead_letters=page.entries,
        dead_letter_total=page.total,
        enrolled=enrolled,
        flag=flags.get(org_id),
        paused=None in paused,
        weight=weight,
    )


def entry_summary(entry: BufferEntry, now: int, payload_bytes: int | None = None) -> dict[str, Any]:
    """What a page shows of an entry (never its payload)."""
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
        "payload_bytes": payload_bytes if payload_bytes is not None else len(entry.payload),
        "mode": entry.mode,
    }


def lookup_summary(found: MessageLookup) -> dict[str, Any] | None:
    """What the lookup page shows of :meth:`TenantControls.lookup`; None when absent."""
    if found.state not in _STATUS:
        return None
    code, message = found.error or (None, None)
    return {
        "message_id": found.message_id,
        "status": _STATUS[found.state],
        "org_id": found.org_id,
        "env_id": found.env_id,
        "position": found.position,
        "attempts": found.attempts,
        "age_ms": found.age_ms,
        "mode": found.mode,
        "error_code": code,
        "error_message": message,
    }
