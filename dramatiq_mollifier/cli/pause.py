"""``dramatiq-mollifier pause`` and ``resume``: hold an org or an env in the buffer, and let go."""

from __future__ import annotations

import argparse
from typing import Any

from .. import console
from . import common
from .controls_common import add_tenant_arguments, open_controls, tenant_name

PAUSE_DESCRIPTION = """\
Pause an org (every env) or one env: its buffered messages stay in the buffer (drainers skip
it; nothing is lost or dead-lettered), and its new sends are buffered too, whatever their rate
(enrolled or not; in dual_write mode the broker still gets them). Live within a second across the
fleet, without a restart. 'stats' lists what is paused; 'resume' lets it drain again."""

PAUSE_EPILOG = f"""\
examples:
  dramatiq-mollifier pause acme               # every env of acme
  dramatiq-mollifier pause acme --env prod
  dramatiq-mollifier stats                    # shows "Paused: ..."

{common.EXIT_CODES_HELP}"""

RESUME_DESCRIPTION = """\
Resume an org or an env paused with 'pause': drainers take its backlog again, oldest first, and
its sends are gated as usual. An env of a paused org stays held until the org is resumed."""

RESUME_EPILOG = f"""\
examples:
  dramatiq-mollifier resume acme
  dramatiq-mollifier resume acme --env prod

{common.EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    pause: argparse.ArgumentParser = subparsers.add_parser(
        "pause",
        help="hold an org or an env in the buffer (drainers skip it, its sends are buffered)",
        description=PAUSE_DESCRIPTION,
        epilog=PAUSE_EPILOG,
        formatter_class=common.help_formatter,
    )
    add_tenant_arguments(pause, "pause")
    pause.set_defaults(func=run, resume=False)
    resume: argparse.ArgumentParser = subparsers.add_parser(
        "resume",
        help="let a paused org or env drain again",
        description=RESUME_DESCRIPTION,
        epilog=RESUME_EPILOG,
        formatter_class=common.help_formatter,
    )
    add_tenant_arguments(resume, "resume")
    resume.set_defaults(func=run, resume=True)


@common.command
def run(args: argparse.Namespace) -> int:
    name = tenant_name(args.org_id, args.env_id)
    with open_controls(args) as (controls, buffer):
        if args.resume:
            if controls.resume(args.org_id, args.env_id):
                print(f"Resumed {name}: drainers take its backlog again (live within a second).")
            else:
                print(f"{name} was not paused.")
            paused = [p for p in controls.paused() if p.org_id == args.org_id]
            if args.env_id is not None and any(p.env_id is None for p in paused):
                print(f"Note: the whole org {args.org_id} is still paused ('resume {args.org_id}').")
            for env_id in sorted(p.env_id for p in paused if args.env_id is None and p.env_id is not None):
                print(
                    f"Note: {args.org_id}/{env_id} is still paused, on its own "
                    f"('resume {args.org_id} --env {env_id}')."
                )
        elif controls.pause(args.org_id, args.env_id):
            depth = buffer.depth(args.org_id, args.env_id)
            print(
                f"Paused {name}: {depth:,} buffered messages held, new sends buffered "
                "(live within a second). Undo with 'dramatiq-mollifier resume'."
            )
        else:
            print(f"{name} was already paused.")
    return console.EXIT_OK
