"""``dramatiq-mollifier caps``: cap one tenant's buffered messages at run time."""

from __future__ import annotations

import argparse
from typing import Any

from . import common
from .controls_common import add_tenant_arguments, open_controls, tenant_name

DESCRIPTION = """\
Cap how many messages one env, or one org (all its envs), may hold in the buffer, so that one
runaway tenant cannot fill Redis (a full Redis makes the gate fail open for everyone, exactly
when the burst is largest). MOLLIFIER_CAP_PER_ENV and MOLLIFIER_CAP_PER_ORG set the default for
every tenant; these runtime overrides win, live within a second. A send over a cap follows
MOLLIFIER_CAP_OVERFLOW: pass_through (to the broker), reject (send() raises
BufferCapExceededError) or dead_letter."""

EPILOG = f"""\
examples:
  dramatiq-mollifier caps list
  dramatiq-mollifier caps set acme 50000               # acme, all envs together
  dramatiq-mollifier caps set acme --env prod 20000
  dramatiq-mollifier caps unset acme --env prod        # back to the settings' cap
  dramatiq-mollifier caps list --json

{common.EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "caps",
        help="list, set or unset runtime caps on a tenant's buffered messages",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the settings' caps and every runtime override")
    listing.add_argument("--json", action="store_true", help="print one JSON document (for machines)")
    common.add_connection_arguments(listing)
    setting = actions.add_parser("set", help="override the cap of an org or an env")
    add_tenant_arguments(setting, "cap")
    setting.add_argument("limit", type=int, metavar="LIMIT", help="most buffered messages (0: none)")
    unsetting = actions.add_parser("unset", help="remove an override: the settings' cap applies again")
    add_tenant_arguments(unsetting, "uncap")
    parser.set_defaults(func=run)


@common.command
def run(args: argparse.Namespace) -> int:
    if args.action == "set" and args.limit < 0:
        raise common.CommandError("LIMIT must be 0 or more", exit_code=common.EXIT_CONFIG)
    with open_controls(args) as (controls, _buffer):
        settings = controls.settings
        assert settings is not None
        if args.action == "set":
            controls.set_cap(args.org_id, args.env_id, limit=args.limit)
            print(f"Capped {tenant_name(args.org_id, args.env_id)} at {args.limit:,} buffered messages.")
            return common.EXIT_OK
        if args.action == "unset":
            controls.set_cap(args.org_id, args.env_id, limit=None)
            print(f"Removed the cap override of {tenant_name(args.org_id, args.env_id)}.")
            return common.EXIT_OK
        caps = controls.caps()
    defaults = {
        "cap_per_env": settings.cap_per_env,
        "cap_per_org": settings.cap_per_org,
        "cap_overflow": settings.cap_overflow.value,
    }
    if args.json:
        common.print_json(
            {
                **defaults,
                "overrides": [{"org_id": c.org_id, "env_id": c.env_id, "limit": c.limit} for c in caps],
            }
        )
        return common.EXIT_OK

    def cap(value: int | None) -> str:
        return "none" if value is None else f"{value:,}"

    print(
        f"Settings: {cap(settings.cap_per_env)} per env, {cap(settings.cap_per_org)} per org, "
        f"overflow {settings.cap_overflow.value}"
    )
    if not caps:
        print("No runtime overrides.")
        return common.EXIT_OK
    rows = [(c.org_id, c.env_id or "(every env)", c.limit) for c in caps]
    print()
    print(common.format_table(("ORG", "ENV", "CAP"), rows))
    return common.EXIT_OK
