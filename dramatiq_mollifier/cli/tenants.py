"""``dramatiq-mollifier tenants``: every env with buffered work, a page at a time."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from .. import console
from ..buffer.controls import TENANT_SORTS
from . import common
from .controls_common import open_controls
from .stats import format_age

DESCRIPTION = """\
List the envs with buffered work (and envs with a pause or cap of their own), one page at a
time: depth, age of the oldest queued message, tripped, paused, cap, weight, enrolled. Cheap with
any number of tenants: a page is a range of the indexes Redis keeps, then the listed envs' rows."""

EPILOG = f"""\
examples:
  dramatiq-mollifier tenants
  dramatiq-mollifier tenants --sort oldest --limit 10   # who has waited longest
  dramatiq-mollifier tenants --sort depth --filter acme    # orgs whose id starts with acme
  dramatiq-mollifier tenants --filter acme/pr               # envs of acme starting with pr
  dramatiq-mollifier tenants --offset 100 --json

{common.EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tenants",
        help="envs with buffered work: depth, oldest age, tripped, paused, cap, weight (paged)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    parser.add_argument("--sort", choices=TENANT_SORTS, default="org", help="order (default: org)")
    parser.add_argument(
        "--filter",
        metavar="TEXT",
        help="only envs whose org id starts with TEXT (ORG/ENV: envs of ORG starting with ENV; the "
        "first / ends the org id, so an org id with a / is reached by its prefix alone)",
    )
    parser.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N (default 0)")
    parser.add_argument("--limit", type=int, default=50, metavar="N", help="show at most N (default 50)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (for machines)")
    common.add_connection_arguments(parser)
    parser.set_defaults(func=run)


@common.command
def run(args: argparse.Namespace) -> int:
    if args.offset < 0 or args.limit < 1:
        raise console.CommandError(
            "--offset must be 0 or more and --limit at least 1", exit_code=console.EXIT_CONFIG
        )
    with open_controls(args) as (controls, _buffer):
        page = controls.tenants(args.offset, args.limit, args.filter, args.sort)
    if args.json:
        common.print_json(asdict(page))
        return console.EXIT_OK
    if not page.rows:
        print("No tenant with buffered work." if page.total == 0 else f"No tenant past offset {args.offset}.")
        return console.EXIT_OK
    rows = [
        (
            r.org_id,
            r.env_id,
            r.depth,
            format_age(r.oldest_age_ms),
            r.tripped,
            r.paused,
            "-" if r.cap is None else r.cap,
            r.weight,
            r.enrolled,
        )
        for r in page.rows
    ]
    headers = ("ORG", "ENV", "DEPTH", "OLDEST", "TRIPPED", "PAUSED", "CAP", "WEIGHT", "ENROLLED")
    print(console.format_table(headers, rows))
    shown = f"{page.offset + 1:,}-{page.offset + len(page.rows):,}"
    print(f"({shown} of {page.total:,}; --offset and --limit page through them)")
    return console.EXIT_OK
