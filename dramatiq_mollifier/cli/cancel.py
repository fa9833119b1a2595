"""``dramatiq-mollifier cancel``: remove buffered messages for good, by id, env or org."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import console
from . import common
from .controls_common import open_controls, tenant_name

DESCRIPTION = """\
Cancel buffered messages: they are removed from the buffer and never reach the broker, even one
a drainer popped a moment before (the drainer finds it gone right before its broker write and
drops it, counted as 'cancelled' in mollifier.drained). An id a drainer had already committed to
its broker write is listed as too late: it will be delivered. Give message ids, or --org (and
optionally --env) for a tenant's whole backlog. Dead letters are left alone ('failed purge'
deletes them). Messages already on the broker are out of reach. Exits 1 when an id was too late
or not buffered."""

EPILOG = f"""\
examples:
  dramatiq-mollifier cancel 8f14e45f-ceea-467f-a0f6-6ad2b4f5e1a7 0b9e2c4a-...
  dramatiq-mollifier cancel --org acme --env prod   # the env's whole backlog
  dramatiq-mollifier pause acme && dramatiq-mollifier cancel --org acme   # stop it, then drop it

{common.EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cancel",
        help="cancel buffered messages by id, or an org's or env's whole backlog",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    parser.add_argument("message_ids", nargs="*", metavar="ID", help="message ids to cancel")
    parser.add_argument("--org", dest="org_id", metavar="ORG", help="cancel this org's backlog")
    parser.add_argument("--env", dest="env_id", metavar="ENV", help="only this env of --org")
    common.add_connection_arguments(parser)
    parser.set_defaults(func=run)


def _plural(count: int) -> str:
    return f"{count:,} buffered message{'s' if count != 1 else ''}"


@common.command
def run(args: argparse.Namespace) -> int:
    if bool(args.message_ids) == (args.org_id is not None):
        raise console.CommandError(
            "give message ids or --org [--env], one or the other", exit_code=console.EXIT_CONFIG
        )
    if args.env_id is not None and args.org_id is None:
        raise console.CommandError("--env needs --org (envs belong to an org)", exit_code=console.EXIT_CONFIG)
    with open_controls(args) as (controls, _buffer):
        if args.org_id is not None:
            cancelled = controls.cancel_tenant(args.org_id, args.env_id)
            print(f"Cancelled {_plural(cancelled)} of {tenant_name(args.org_id, args.env_id)}.")
            return console.EXIT_OK
        ids = list(dict.fromkeys(args.message_ids))
        outcome = controls.cancel_each(ids)
    print(f"Cancelled {_plural(len(outcome.cancelled))}.")
    for message_id in outcome.too_late:
        print(f"Too late: {message_id} (a drainer had already committed it to the broker)")
    if outcome.too_late or outcome.not_buffered:
        print(
            f"dramatiq-mollifier: error: {len(ids) - len(outcome.cancelled):,} of {len(ids):,} ids were "
            f"not cancelled: {len(outcome.too_late):,} too late, {len(outcome.not_buffered):,} not buffered "
            "(already drained, dead-lettered, or unknown: 'dramatiq-mollifier show ID' tells)",
            file=sys.stderr,
        )
        return console.EXIT_PROBLEM
    return console.EXIT_OK
