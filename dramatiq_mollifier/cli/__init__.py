"""``dramatiq-mollifier``: the operator command line. One module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Subcommand modules; each has ``register(subparsers)`` that sets ``func`` on its parser.
COMMANDS = (
    "demo",
    "stats",
    "tenants",
    "show",
    "cancel",
    "pause",
    "caps",
    "weights",
    "orgs",
    "failed",
    "drain",
    "dashboard",
)


EPILOG = """\
Run 'dramatiq-mollifier COMMAND --help' for a command's options and examples.
Settings come from MOLLIFIER_* variables; --redis-url and --key-prefix override them.

exit codes: 0 ok, 1 problem found, 2 bad arguments, settings or URL,
            3 Redis unreachable or failing, 130 interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dramatiq-mollifier",
        description="Smooth per-tenant enqueue bursts in Dramatiq: demo, inspect and steer the buffer.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
