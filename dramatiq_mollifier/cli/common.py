"""What every operator command shares: connection options, settings, errors as exit codes, help.

Every command reads the same settings as the middleware (``MOLLIFIER_*`` variables, see
:class:`~dramatiq_mollifier.settings.MollifierSettings`); ``--redis-url`` and ``--key-prefix``
override them.

Exit codes, connecting, opening the buffer and tables live in :mod:`dramatiq_mollifier.console`
(shared with the demo): commands import them from there.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import redis

from ..console import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_UNAVAILABLE, CommandError
from ..errors import BufferUnavailableError, InvalidArgumentError, MollifierConfigurationError
from ..settings import MollifierSettings

__all__ = [
    "EXIT_CODES_HELP",
    "add_connection_arguments",
    "command",
    "help_formatter",
    "print_json",
    "settings_from_args",
]

#: The epilog paragraph every command's ``--help`` ends with.
EXIT_CODES_HELP = (
    "exit codes: 0 success; 1 the command found a problem (unknown id, counts that do not add up);\n"
    "  2 bad arguments, settings or URL; 3 Redis unreachable or failing."
)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--redis-url`` and ``--key-prefix``, which override ``MOLLIFIER_*``."""
    group = parser.add_argument_group("connection (default: the MOLLIFIER_* environment)")
    group.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis holding the buffer, e.g. redis://localhost:6379/0 "
        "(default: $MOLLIFIER_REDIS_URL, else redis://localhost:6379/0)",
    )
    group.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        help="prefix of the mollifier's Redis keys (default: $MOLLIFIER_KEY_PREFIX, else mollifier)",
    )


def settings_from_args(args: argparse.Namespace) -> MollifierSettings:
    """The settings from ``MOLLIFIER_*``, with the command's flags on top."""
    values: dict[str, Any] = {}
    # An empty flag is a value to check, not a missing one: --key-prefix "" must not mean the
    # default prefix.
    if getattr(args, "redis_url", None) is not None:
        values["redis_url"] = args.redis_url
    if getattr(args, "key_prefix", None) is not None:
        values["key_prefix"] = args.key_prefix
    return MollifierSettings(**values)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True))


def command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command's ``run``: known failures become one line on stderr and an exit code."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CommandError as exc:
            return _fail(str(exc), exc.exit_code)
        except (MollifierConfigurationError, InvalidArgumentError) as exc:
            return _fail(str(exc), EXIT_CONFIG)
        except (BufferUnavailableError, redis.RedisError) as exc:
            return _fail(f"Redis failed during the command: {exc}", EXIT_UNAVAILABLE)
        except KeyboardInterrupt:
            return _fail("interrupted", EXIT_INTERRUPTED)

    return run


def _fail(message: str, exit_code: int) -> int:
    print(f"dramatiq-mollifier: error: {message}", file=sys.stderr)
    return exit_code


def help_formatter(prog: str) -> argparse.HelpFormatter:
    """Keeps the line breaks of descriptions and epilogs (the examples)."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)
