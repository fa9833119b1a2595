"""What the operator commands and the demo share: exit codes, errors, connecting, tables.

It sits below both :mod:`dramatiq_mollifier.cli` and :mod:`dramatiq_mollifier.demo`, so the demo
(part of the library) never imports the command line.

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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .buffer import MollifierBuffer
from .buffer.clients import client_from_url
from .buffer.health import recorded_layout_problem
from .settings import MollifierSettings, redis_url_problem

__all__ = [
    "CONNECT_TIMEOUT_S",
    "EXIT_CONFIG",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_UNAVAILABLE",
    "SOCKET_TIMEOUT_S",
    "CommandError",
    "check_layout",
    "connect",
    "format_table",
    "open_buffer",
    "redact_url",
]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
#: Ctrl-C, as shells report SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


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
    """Reject what redis-py would silently misread (a non-numeric db) or fail on later, as the
    settings do (:func:`~dramatiq_mollifier.settings.redis_url_problem`)."""
    problem = redis_url_problem(url)
    if problem is not None:
        raise CommandError(f"bad Redis URL {redact_url(url)}: {problem}", exit_code=EXIT_CONFIG)


def connect(url: str) -> redis.Redis:
    """A client for ``url`` with bounded timeouts, checked with a PING.

    Raises :class:`CommandError` for a bad URL (exit 2) or a server that does not answer (exit 3).
    """
    _check_url(url)
    try:
        client: redis.Redis = client_from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            # One attempt: an operator wants the error now, not after a backoff schedule.
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise CommandError(f"bad Redis URL {redact_url(url)}: {exc}", exit_code=EXIT_CONFIG) from exc
    except (redis.RedisError, RedisClusterException) as exc:  # a cluster client connects at once
        raise CommandError(
            f"cannot reach Redis at {redact_url(url)}: {exc}", exit_code=EXIT_UNAVAILABLE
        ) from exc
    try:
        client.ping()
    except (redis.RedisError, RedisClusterException) as exc:
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
        buffer = MollifierBuffer(client, **settings.buffer_options)
        check_layout(client, buffer)
        yield buffer, client
    finally:
        client.close()


def check_layout(client: redis.Redis, buffer: MollifierBuffer) -> None:
    """Refuse (exit 2) a buffer whose recorded key layout is not these settings': the command
    would read and write keys the fleet never uses (a pause that pauses nothing)."""
    try:
        problem = recorded_layout_problem(client, buffer.keys)
    except redis.RedisError as exc:
        raise CommandError(f"Redis failed: {exc}", exit_code=EXIT_UNAVAILABLE) from exc
    if problem is not None:
        raise CommandError(problem, exit_code=EXIT_CONFIG)


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
