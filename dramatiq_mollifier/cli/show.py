"""``dramatiq-mollifier show``: where one message is in the buffer."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from ..models import MessageLookup
from . import common
from .controls_common import open_controls
from .stats import format_age

DESCRIPTION = """\
Show where a message is: queued (with its position in its env's queue, 0 = next to drain),
draining (a drainer popped it and is putting it back on the broker), dead-lettered (with its last
error), or not in the buffer (never buffered, already drained, or cancelled). Exits 1 when it is
not in the buffer."""

EPILOG = f"""\
examples:
  dramatiq-mollifier show 8f14e45f-ceea-467f-a0f6-6ad2b4f5e1a7
  dramatiq-mollifier show 8f14e45f-ceea-467f-a0f6-6ad2b4f5e1a7 --json

{common.EXIT_CODES_HELP}"""

_STATES = {
    "queued": "queued",
    "draining": "draining (popped by a drainer, on its way to the broker)",
    "dead_lettered": "dead-lettered",
}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "show",
        help="where one message is: queued (and its position), draining, dead-lettered, or absent",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    parser.add_argument("message_id", metavar="ID", help="the message id (what send() returned)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (for machines)")
    common.add_connection_arguments(parser)
    parser.set_defaults(func=run)


def render(found: MessageLookup) -> str:
    """The human-readable report."""
    if found.state == "absent":
        return (
            f"Message {found.message_id} is not in the buffer "
            "(never buffered, already drained, or cancelled)."
        )
    lines = [
        f"Message {found.message_id} is {_STATES[found.state]}",
        f"  org/env:   {found.org_id}/{found.env_id}",
    ]
    if found.position is not None:
        lines.append(f"  position:  {found.position:,} in its env's queue (0 = next to drain)")
    lines += [f"  attempts:  {found.attempts}", f"  age:       {format_age(found.age_ms)}"]
    if found.error is not None:
        lines.append(f"  error:     {found.error[0]}: {found.error[1]}")
    return "\n".join(lines)


@common.command
def run(args: argparse.Namespace) -> int:
    with open_controls(args) as (controls, _buffer):
        found = controls.lookup(args.message_id)
    if args.json:
        data = asdict(found)
        data["error"] = None if found.error is None else {"code": found.error[0], "message": found.error[1]}
        common.print_json(data)
    else:
        print(render(found))
    return common.EXIT_PROBLEM if found.state == "absent" else common.EXIT_OK
