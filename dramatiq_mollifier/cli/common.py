"""What every operator command shares: connection options, settings, opening the buffer, errors.

Every command reads the same settings as the middleware (``MOLLIFIER_*`` variables, see
:class:`~dramatiq_mollifier.settings.MollifierSettings`); ``--redis-url`` and ``--key-prefix``
override them.

Exit codes, the same for every command:

====  ==========================================================================================
0     Success.
1     The command ran but found a problem: an unknown id, a demo whose counts do not add up.
2     Usage or configuration: a bad argument, an invalid ``MOLLIFIER_*`` setting, a bad URL.
3     Redis could not be reached, timed out or failed during the command.
130   Interrupted (Ctrl-C); the demo still stops its worker and server first.
====  ==========================================================================================
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..buffer import MollifierBuffer
from ..errors import BufferUnavailableError, MollifierConfigurationError
from ..settings import MollifierSettings

__all__ = [
    "CONNECT_TIMEOUT_S",
    "EXIT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_UNAVAILABLE",
    "EXIT_CODES_HELP",
    "SOCKET_TIMEOUT_S",
    "CommandError",
    "add_connection_arguments",
    "command",
    "connect",
    "format_table",
    "help_formatter",
    "open_buffer",
    "print_json",
    "redact_url",
    "settings_from_args",
]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
#: Ctrl-C, as shells report SIGINT (128 + 2).
EXIT_INTERRUPTED = 130

#: The epilog paragraph every command's ``--help`` ends with.
EXIT_CODES_HELP = (
    "exit codes: 0 success; 1 the command found a problem (unknown id, counts that do not add up);\n"
    "  2 bad arguments, settings or URL; 3 Redis unreachable or failing."
)

#: How long to wait for a TCP connection to Redis, in seconds. Bounded so that an unreachable
#: server is reported within a few seconds instead of hanging the terminal.
CONNECT_TIMEOUT_S = 3.0
#: How long to wait for any one Redis reply, in seconds.
SOCKET_TIMEOUT_S = 10.0


class CommandError(Exception):
    """A problem the command reports in one line on stderr, exiting with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    if getattr(args, "redis_url", None):
        values["redis_url"] = args.redis_url
    if getattr(args, "key_prefix", None):
        values["key_prefix"] = args.key_prefix
    return MollifierSettings(**values)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for an error message."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "<unparseable URL>"


def _check_url(url: str) -> None:
    """Reject what redis-py would silently misread (a non-numeric db) or fail on later."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise CommandError(f"bad Redis URL {redact_url(url)}: {exc}", exit_code=EXIT_CONFIG) from exc
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise CommandError(f"bad Redis URL {redact_url(url)}: no host", exit_code=EXIT_CONFIG)
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise CommandError(
                f"bad Redis URL {redact_url(url)}: database {db!r} is not a number",
                exit_code=EXIT_CONFIG,
            )


def connect(url: str) -> redis.Redis:
    """A client for ``url`` with bounded timeouts, checked with a PING.

    Raises :class:`CommandError` for a bad URL (exit 2) or a server that does not answer (exit 3).
    """
    _check_url(url)
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            # One attempt: an operator wants the error now, not after a backoff schedule.
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise CommandError(f"bad Redis URL {redact_url(url)}: {exc}", exit_code=EXIT_CONFIG) from exc
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise CommandError(
            f"cannot reach Redis at {redact_url(url)}: {exc}", exit_code=EXIT_UNAVAILABLE
        ) from exc
    return client


@contextmanager
def open_buffer(settings: MollifierSettings) -> Iterator[tuple[MollifierBuffer, redis.Redis]]:
    """The buffer the middleware of these settings writes to, and its client; closed on exit."""
    client = connect(settings.redis_url)
    try:
        yield MollifierBuffer(client, **settings.buffer_options), client
    finally:
        client.close()


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
        except MollifierConfigurationError as exc:
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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: columns padded to fit, numbers right-aligned with thousands commas."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)
