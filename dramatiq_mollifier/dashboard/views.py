"""The dashboard's pages (GET only; every change goes through :mod:`.actions`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Blueprint, jsonify, render_template, request
from werkzeug.wrappers import Response

from . import controls
from .app import state
from .data import SORT_KEYS, entry_summary, now_ms, overview, tenant_detail

__all__ = ["PAGE_SIZE", "blueprint"]

blueprint = Blueprint("views", __name__)

#: Rows per page of the tenant table.
PAGE_SIZE = 50
#: Dead letters listed on one page.
DEAD_LETTER_LIMIT = 200


def _overview_json() -> dict[str, Any]:
    s = state()
    breaker = s.breaker
    breaker_open = (lambda: breaker.is_open) if breaker is not None else None
    o = overview(s.buffer, s.settings, broker_depth=s.broker_depth, breaker_open=breaker_open)
    return {
        "depth": o.depth,
        "orgs": o.orgs,
        "tripped": [{"org_id": t.org_id, "env_id": t.env_id} for t in o.tripped],
        "dead_letters": o.dead_letters,
        "outstanding": o.outstanding,
        "max_outstanding": o.max_outstanding,
        "rate_limit_per_s": o.rate_limit_per_s,
        "broker_depth": o.broker_depth,
        "breaker_open": o.breaker_open,
    }


@blueprint.get("/")
def index() -> str:
    return render_template("overview.html", o=_overview_json(), interval_ms=state().series.interval_ms)


@blueprint.get("/api/overview")
def api_overview() -> Response:
    series = [
        {"at_ms": s.at_ms, "buffer": s.buffer_depth, "broker": s.broker_depth}
        for s in state().series.samples()
    ]
    return jsonify({**_overview_json(), "series": series})


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        return default
    return min(max(value, low), high)


@blueprint.get("/tenants")
def tenants() -> str:
    s = state()
    sort = request.args.get("sort", "org")
    sort = sort if sort in SORT_KEYS else "org"
    filter_text = request.args.get("q", "")[:200]
    page_number = _int_arg("page", 1, 1, 1_000_000)
    page, missing = controls.tenant_page(
        s.buffer,
        s.settings,
        offset=(page_number - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
        filter_text=filter_text,
        sort=sort,  # type: ignore[arg-type]
    )
    return render_template(
        "tenants.html",
        page=page,
        q=filter_text,
        sort=sort,
        page_number=page_number,
        pages=max(1, -(-page.total // PAGE_SIZE)),
        missing=missing,
    )


@blueprint.get("/tenant")
def tenant() -> str:
    s = state()
    org = request.args.get("org", "")
    detail = None
    missing: list[str] = []
    if org:
        detail = tenant_detail(s.buffer, s.settings, org)
        r = controls.reads(s.buffer, s.settings)
        detail = replace(detail, envs=controls.overlay(r, detail.envs))
        missing = r.missing
    return render_template(
        "tenant.html",
        org=org,
        d=detail,
        now=now_ms(s.buffer.client),
        entry_summary=entry_summary,
        missing=missing,
    )


@blueprint.get("/lookup")
def lookup() -> str:
    s = state()
    message_id = request.args.get("id", "").strip()
    found = controls.lookup(s.buffer, s.settings, message_id) if message_id else None
    return render_template("lookup.html", message_id=message_id, found=found)


@blueprint.get("/dead-letters")
def dead_letters() -> str:
    s = state()
    org = request.args.get("org") or None
    env = (request.args.get("env") or None) if org else None
    entries = s.buffer.failed(org, env)
    now = now_ms(s.buffer.client)
    return render_template(
        "dead_letters.html",
        entries=[entry_summary(e, now) for e in entries[:DEAD_LETTER_LIMIT]],
        total=len(entries),
        org=org,
        env=env,
    )


#: The destructive actions and what their confirmation page says.
CONFIRMATIONS = {
    "purge": "Delete these dead letters for good",
    "cancel": "Cancel these buffered messages: they will never reach the broker",
    "disenrol": "Stop diverting this org's bursts (its runtime flag off)",
}


@blueprint.get("/confirm")
def confirm() -> tuple[str, int] | str:
    action = request.args.get("action", "")
    if action not in CONFIRMATIONS:
        return render_template("message.html", text=f"unknown action {action!r}"), 400
    fields = {key: value for key, value in request.args.items() if key != "action"}
    return render_template("confirm.html", action=action, text=CONFIRMATIONS[action], fields=fields)
