"""``dramatiq-mollifier weights``: give an org a bigger share of the drain."""

from __future__ import annotations

import argparse
from typing import Any

from ..buffer.rules import MAX_WEIGHT
from . import common
from .controls_common import open_controls

DESCRIPTION = f"""\
Weigh orgs' shares of the drain: while several orgs have a backlog, an org of weight W is served
W times as often as an org of weight 1 (the default), so it drains W times as fast. An org that
comes back from idle starts with one turn like everyone, with no credit banked while it was idle.
Weights are whole numbers from 1 to {MAX_WEIGHT}; live within a second across the fleet."""

EPILOG = f"""\
examples:
  dramatiq-mollifier weights list
  dramatiq-mollifier weights set acme 3     # acme drains 3x as fast as a weight-1 org
  dramatiq-mollifier weights unset acme     # back to 1

{common.EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "weights",
        help="list, set or unset an org's share of the drain (default 1)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every org with a weight other than 1")
    listing.add_argument("--json", action="store_true", help="print one JSON document (for machines)")
    common.add_connection_arguments(listing)
    setting = actions.add_parser("set", help="set an org's weight")
    setting.add_argument("org_id", metavar="ORG")
    setting.add_argument("weight", type=int, metavar="WEIGHT", help=f"1 to {MAX_WEIGHT}")
    common.add_connection_arguments(setting)
    unsetting = actions.add_parser("unset", help="back to weight 1")
    unsetting.add_argument("org_id", metavar="ORG")
    common.add_connection_arguments(unsetting)
    parser.set_defaults(func=run)


@common.command
def run(args: argparse.Namespace) -> int:
    if args.action == "set" and not 1 <= args.weight <= MAX_WEIGHT:
        raise common.CommandError(f"WEIGHT must be from 1 to {MAX_WEIGHT}", exit_code=common.EXIT_CONFIG)
    with open_controls(args) as (controls, _buffer):
        if args.action == "set":
            controls.set_weight(args.org_id, args.weight)
            print(f"Weight of {args.org_id}: {args.weight} (others 1 unless set).")
            return common.EXIT_OK
        if args.action == "unset":
            controls.set_weight(args.org_id, None)
            print(f"Weight of {args.org_id}: back to 1.")
            return common.EXIT_OK
        weights = controls.weights()
    if args.json:
        common.print_json(weights)
    elif not weights:
        print("Every org has weight 1.")
    else:
        print(common.format_table(("ORG", "WEIGHT"), sorted(weights.items())))
        print("(every other org: 1)")
    return common.EXIT_OK
