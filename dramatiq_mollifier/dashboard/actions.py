"""The dashboard's actions: POST only, each behind the CSRF check of :mod:`.security`, each the
same call the command line makes. Destructive ones (purge, cancel, disenrol) also need
``confirm=yes``, which only the confirmation page's form sends."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, request, url_for
from werkzeug.wrappers import Response

from ..gate.flags import OrgFlags
from .app import state
from .security import local_target

__all__ = ["blueprint"]

blueprint = Blueprint("actions", __name__, url_prefix="/actions")


def _back(default: str = "views.index") -> Response:
    """Redirect to the form's ``next`` if it is a path of this dashboard, else to ``default``."""
    return redirect(local_target(request.form.get("next"), request) or url_for(default), code=303)


# Ids are taken as given, never stripped: tenants choose them, and "acme " is not "acme" (a
# stripped id paused, cancelled or purged another tenant's work than the one shown).
def _required(name: str) -> str:
    value = request.form.get(name, "")
    if not value:
        abort(400, f"missing {name}")
    return value


def _confirmed() -> None:
    if request.form.get("confirm") != "yes":
        abort(400, "this action deletes or stops work: confirm it on its confirmation page")


def _scope() -> tuple[str | None, str | None]:
    org = request.form.get("org") or None
    env = request.form.get("env") or None
    if env is not None and org is None:
        abort(400, "env needs org (envs belong to an org)")
    return org, env


@blueprint.post("/enrol")
def enrol() -> Response:
    org = _required("org")
    value = request.form.get("value", "on")
    flags = OrgFlags(state().buffer.client, key_prefix=state().settings.key_prefix)
    if value == "on":
        flags.enable(org)
        flash(f"{org}: runtime flag on (enrolled)")
    elif value == "off":
        _confirmed()
        flags.disable(org)
        flash(f"{org}: runtime flag off")
    elif value == "reset":
        flags.remove(org)
        flash(f"{org}: runtime flag removed (the static setting decides)")
    else:
        abort(400, "value must be on, off or reset")
    return _back()


@blueprint.post("/retry")
def retry() -> Response:
    buffer = state().buffer
    ids = request.form.getlist("id")
    if not ids:
        org, env = _scope()
        ids = buffer.failed_ids(org, env)
    retried = sum(1 for message_id in ids if buffer.retry_failed(message_id))
    flash(f"Retried {retried:,} of {len(ids):,} dead letter(s): back in their queues.")
    return _back("views.dead_letters")


@blueprint.post("/purge")
def purge() -> Response:
    _confirmed()
    org, env = _scope()
    purged = state().buffer.purge_failed(org, env)
    flash(f"Purged {purged:,} dead letter(s).")
    return _back("views.dead_letters")


@blueprint.post("/pause")
def pause() -> Response:
    org, env = _scope()
    if org is None:
        abort(400, "missing org")
    name = f"{org}/{env}" if env else org
    if state().controls.pause(org, env):
        flash(f"Paused {name}: its messages stay in the buffer until it is resumed.")
    else:
        flash(f"{name} was already paused.")
    return _back()


@blueprint.post("/resume")
def resume() -> Response:
    org, env = _scope()
    if org is None:
        abort(400, "missing org")
    name = f"{org}/{env}" if env else org
    if state().controls.resume(org, env):
        flash(f"Resumed {name}: the drainer takes its messages again.")
    else:
        flash(f"{name} was not paused (an env of a paused org stays held until the org resumes).")
    return _back()


@blueprint.post("/cancel")
def cancel() -> Response:
    _confirmed()
    s = state()
    ids = [i for i in request.form.getlist("id") if i]
    if ids:
        count = s.controls.cancel(ids)
    else:
        org, env = _scope()
        if org is None:
            abort(400, "give message ids or an org")
        count = s.controls.cancel_tenant(org, env)
    flash(f"Cancelled {count:,} buffered message(s).")
    return _back()
