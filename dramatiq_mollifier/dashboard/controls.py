"""The per-tenant controls (listing, lookup, pause, cancel, caps, weights) as the dashboard uses
them: :class:`~dramatiq_mollifier.buffer.controls.TenantControls`, the API behind the ``show``,
``cancel``, ``pause`` and ``resume`` commands.

A control this version does not implement (``NotImplementedError``) is not an error for a page:
reads fall back to what :mod:`.data` reads from the buffer's counters, with the missing columns
named in :attr:`Reads.missing`; actions answer 501.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from flask import abort

from ..buffer import MollifierBuffer
from ..buffer.controls import TenantControls
from ..models import MessageLookup, TenantPage, TenantRow
from ..settings import MollifierSettings
from . import data

__all__ = ["Reads", "act", "lookup", "overlay", "tenant_page"]

_T = TypeVar("_T")


@dataclass
class Reads:
    """What a page could read from the controls, and what it had to leave out."""

    controls: TenantControls | None
    missing: list[str] = field(default_factory=list)

    def get(self, name: str, read: Callable[[TenantControls], _T]) -> _T | None:
        """``read(controls)``, or None (noting ``name`` as missing) when not implemented."""
        if self.controls is None:
            self.missing.append(name)
            return None
        try:
            return read(self.controls)
        except NotImplementedError:
            self.missing.append(name)
            return None


def reads(buffer: MollifierBuffer, settings: MollifierSettings) -> Reads:
    """The controls over ``buffer`` (None inside when this version cannot build them)."""
    try:
        return Reads(TenantControls(buffer.client, key_prefix=buffer.key_prefix, settings=settings))
    except NotImplementedError:
        return Reads(None)


def tenant_page(
    buffer: MollifierBuffer,
    settings: MollifierSettings,
    *,
    offset: int,
    limit: int,
    filter_text: str,
    sort: data.SortKey,
) -> tuple[TenantPage, list[str]]:
    """One page of the tenant table, and the columns that could not be read."""
    r = reads(buffer, settings)
    page = r.get("listing", lambda c: c.tenants(offset, limit, filter_text or None, sort))
    if page is not None:
        return page, r.missing
    page = data.tenant_page(buffer, settings, offset=offset, limit=limit, filter_text=filter_text, sort=sort)
    rows = overlay(r, page.rows)
    return replace(page, rows=rows), [m for m in r.missing if m != "listing"]


def overlay(r: Reads, rows: Sequence[TenantRow]) -> list[TenantRow]:
    """``rows`` with pause, cap and weight filled from the controls' rules where they read."""
    paused = r.get("pause", lambda c: c.paused())
    caps = r.get("caps", lambda c: c.caps())
    weights = r.get("weights", lambda c: c.weights())
    out = []
    for row in rows:
        changes: dict[str, Any] = {}
        if paused is not None:
            changes["paused"] = any(p.org_id == row.org_id and p.env_id in (None, row.env_id) for p in paused)
        if caps is not None:
            own = [cap.limit for cap in caps if cap.org_id == row.org_id and cap.env_id == row.env_id]
            changes["cap"] = own[0] if own else row.cap
        if weights is not None:
            changes["weight"] = weights.get(row.org_id, 1)
        out.append(replace(row, **changes))
    return out


def lookup(buffer: MollifierBuffer, settings: MollifierSettings, message_id: str) -> dict[str, Any] | None:
    """Where ``message_id`` is, as the lookup page shows it; None when it is not in the buffer."""
    r = reads(buffer, settings)
    found: MessageLookup | None = r.get("lookup", lambda c: c.lookup(message_id))
    if found is None:
        entry = buffer.get(message_id)
        return data.entry_summary(entry, data.now_ms(buffer.client)) if entry is not None else None
    if found.state == "absent":
        return None
    code, message = found.error or (None, None)
    status = {"queued": "QUEUED", "draining": "DRAINING", "dead_lettered": "FAILED"}[found.state]
    return {
        "message_id": found.message_id,
        "status": status,
        "org_id": found.org_id,
        "env_id": found.env_id,
        "position": found.position,
        "attempts": found.attempts,
        "age_ms": found.age_ms,
        "mode": found.mode,
        "error_code": code,
        "error_message": message,
    }


def act(buffer: MollifierBuffer, settings: MollifierSettings, call: Callable[[TenantControls], _T]) -> _T:
    """Run an action through the controls; 501 when this version does not implement it."""
    try:
        return call(TenantControls(buffer.client, key_prefix=buffer.key_prefix, settings=settings))
    except NotImplementedError:
        abort(501, "this control is not implemented in this version of dramatiq-mollifier")
