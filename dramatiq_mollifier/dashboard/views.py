"""The dashboard's pages (GET only; every change goes through :mod:`.actions`)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify, render_template, request, url_for
from werkzeug.wrappers import Response

from ..buffer.controls import TENANT_SORTS
from .app import state
from .data import entry_summary, lookup_summary, now_ms, overview, tenant_detail
from .security import local_target

__all__ = ["CONFIRMATIONS", "DEAD_LETTER_LIMIT", "PAGE_SIZE", "blueprint"]

logger = logging.getLogger(__name__)

blueprint = Blueprint("views", __name__)

#: Rows per page of the tenant table.
PAGE_SIZE = 50
#: Dead letters listed on one page.
DEAD_LETTER_LIMIT = 200


def _broker_depth() -> int | None:
    reader = state().broker_depth
    try:
        return reader() if reader is not None else None
    except Exception:  # the broker's trouble is not the buffer's page's: show "-"
        logger.warning("dashboard: could not read the broker queues' depth", exc_info=True)
        return None


def _overview_json() -> dict[str, Any]:
    s = state()
    o = overview(
        s.buffer,
        s.controls,
        s.settings,
        broker_depth=_broker_depth(),
        breaker_open=s.breaker.is_open if s.breaker is not None else None,
    )
    return {
        "depth": o.depth,
        "orgs": o.orgs,
        "tripped": [{"org_id": t.org_id, "env_id": t.env_id} for t in o.tripped],
        "paused": o.paused,
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


def _page_number() -> int:
    try:
        return min(max(int(request.args.get("page", 1)), 1), 1_000_000)
    except ValueError:
        return 1


@blueprint.get("/tenants")
def tenants() -> str:
    sort = request.args.get("sort", "org")
    sort = sort if sort in TENANT_SORTS else "org"
    filter_text = request.args.get("q", "").strip()[:200]
    page_number = _page_number()
    page = state().controls.tenants((page_number - 1) * PAGE_SIZE, PAGE_SIZE, filter_text or None, sort)
    return render_template(
        "tenants.html",
        page=page,
        q=filter_text,
        sort=sort,
        page_number=page_number,
        pages=max(1, -(-page.total // PAGE_SIZE)),
    )


@blueprint.get("/tenant")
def tenant() -> str:
    s = state()
    org = request.args.get("org", "")  # as given: see actions.py on stripped ids
    detail = tenant_detail(s.buffer, s.controls, s.listing, s.settings, org) if org else None
    return render_template(
        "tenant.html", org=org, d=detail, now=now_ms(s.buffer.client), entry_summary=entry_summary
    )


@blueprint.get("/lookup")
def lookup() -> str:
    message_id = request.args.get("id", "").strip()
    found = lookup_summary(state().controls.lookup(message_id)) if message_id else None
    return render_template("lookup.html", message_id=message_id, found=found)


@blueprint.get("/dead-letters")
def dead_letters() -> str:
    s = state()
    org = request.args.get("org") or None
    env = (request.args.get("env") or None) if org else None
    page = s.buffer.failed_page(org, env, limit=DEAD_LETTER_LIMIT)
    now = now_ms(s.buffer.client)
    return render_template(
        "dead_letters.html",
        entries=[
            entry_summary(e, now, size) for e, size in zip(page.entries, page.payload_bytes, strict=True)
        ],
        total=page.total,
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
    fields = {key: value for key, value in request.args.items() if key != "action" and value}
    back = local_target(fields.get("next"), request) or url_for("views.index")
    return render_template(
        "confirm.html", action=action, text=CONFIRMATIONS[action], fields=fields, back=back
    )
