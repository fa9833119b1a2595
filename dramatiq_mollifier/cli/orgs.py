"""``dramatiq-mollifier orgs``: enrol and unenrol orgs at run time, without a restart."""

from __future__ import annotations

import argparse
from typing import Any

from .. import console
from ..settings import ALL_ORGS, MollifierSettings
from . import common

DESCRIPTION = """\
Steer which orgs the mollifier may divert, at run time. An org is enrolled when the static
setting enrols it (MOLLIFIER_ENABLED_ORGS, where * enrols every org) or when its runtime flag is
on. Runtime flags live in Redis, so every process sees a change within the middleware's short
flag cache, without a restart. The kill switch MOLLIFIER_ENABLED still rules above all of it."""

EPILOG = f"""\
examples:
  dramatiq-mollifier orgs list
  dramatiq-mollifier orgs enable acme globex     # divert these orgs' bursts from now on
  dramatiq-mollifier orgs disable acme           # runtime flag off (a static enrolment still wins)
  dramatiq-mollifier orgs reset acme             # drop the runtime flag: back to the static setting
  dramatiq-mollifier orgs list --json

{common.EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "orgs",
        help="enable, disable or list per-org runtime flags",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("enable", "turn the runtime flag of ORG on: the org is enrolled"),
        ("disable", "turn the runtime flag of ORG off (a static enrolment still enrols it)"),
        ("reset", "remove the runtime flag of ORG: only the static setting decides"),
    ):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("org_ids", nargs="+", metavar="ORG", help="one or more org ids")
        common.add_connection_arguments(action)
    listing = actions.add_parser(
        "list",
        help="list runtime flags and static enrolments",
        description="List every org with a runtime flag or a static enrolment, and whether it is enrolled.",
    )
    listing.add_argument("--json", action="store_true", help="print one JSON document (for machines)")
    common.add_connection_arguments(listing)
    parser.set_defaults(func=run)


def listing(flags: dict[str, bool], settings: MollifierSettings) -> dict[str, Any]:
    """Each org with its runtime flag, its static enrolment and the resulting enrolment."""
    static = {org for org in settings.enabled_orgs if org != ALL_ORGS}
    orgs = []
    for org in sorted(static | set(flags)):
        flag = flags.get(org)
        statically = settings.org_enrolled_statically(org)
        orgs.append({"org_id": org, "flag": flag, "static": statically, "enrolled": statically or bool(flag)})
    return {"all_orgs_enrolled": ALL_ORGS in settings.enabled_orgs, "orgs": orgs}


def render(data: dict[str, Any]) -> str:
    lines = []
    if data["orgs"]:
        rows = [
            (o["org_id"], {True: "on", False: "off", None: "-"}[o["flag"]], o["static"], o["enrolled"])
            for o in data["orgs"]
        ]
        lines.append(console.format_table(("ORG", "RUNTIME FLAG", "STATIC", "ENROLLED"), rows))
    else:
        lines.append("No runtime flags, and MOLLIFIER_ENABLED_ORGS names no org.")
    if data["all_orgs_enrolled"]:
        lines.append("MOLLIFIER_ENABLED_ORGS contains '*': every org is enrolled.")
    return "\n".join(lines)


@common.command
def run(args: argparse.Namespace) -> int:
    from ..gate.flags import OrgFlags

    for org in args.org_ids if args.action != "list" else ():
        if not org.strip():
            raise console.CommandError("an org id must not be empty", exit_code=console.EXIT_CONFIG)
        # A runtime flag names one org: '*' or 'a,b' would be stored as an org nobody has
        if org == ALL_ORGS or "," in org:
            raise console.CommandError(
                f"{org!r} is not one org id: give each id as an argument (orgs enable acme globex); "
                f"every org is enrolled by MOLLIFIER_ENABLED_ORGS=*",
                exit_code=console.EXIT_CONFIG,
            )
    settings = common.settings_from_args(args)
    client = console.connect(settings.redis_url)
    try:
        flags = OrgFlags(client, key_prefix=settings.key_prefix)
        if args.action == "list":
            data = listing(flags.all(), settings)
            if args.json:
                common.print_json(data)
            else:
                print(render(data))
            return console.EXIT_OK
        for org in args.org_ids:
            if args.action == "enable":
                flags.enable(org)
                print(f"{org}: runtime flag on (enrolled)")
            elif args.action == "disable":
                flags.disable(org)
                still = " (still enrolled by MOLLIFIER_ENABLED_ORGS)"
                print(f"{org}: runtime flag off{still if settings.org_enrolled_statically(org) else ''}")
            else:
                removed = flags.remove(org)
                enrolled = "enrolled" if settings.org_enrolled_statically(org) else "not enrolled"
                what = "runtime flag removed" if removed else "had no runtime flag"
                print(f"{org}: {what} ({enrolled} by MOLLIFIER_ENABLED_ORGS)")
        return console.EXIT_OK
    finally:
        client.close()
