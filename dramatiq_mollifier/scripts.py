"""The buffer's Lua scripts, read from ``lua/`` and registered on a client.

Each ``lua/<verb>.lua`` is one atomic operation with a KEYS/ARGV/returns header. ``lua/_lib.lua``
holds the helpers they share and is prepended to each script when it is loaded. Registration
goes through ``client.register_script``, whose script objects run EVALSHA and load the script
again when the server answers NOSCRIPT (after a restart or ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

__all__ = ["SCRIPT_NAMES", "Scripts", "run_pipelined", "script_source"]

#: Every script the buffer runs, by file name without ``.lua``.
SCRIPT_NAMES = (
    "accept",
    "ack",
    "evaluate_trip",
    "evaluate_trip_and_accept",
    "expired_leases",
    "fail",
    "pop",
    "purge_failed",
    "reclaim",
    "requeue",
    "retry_failed",
    "tripped",
)

_LIBRARY = "_lib"


def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def script_source(name: str) -> str:
    """The text sent to Redis for script ``name``: the shared helpers, then the script."""
    if name not in SCRIPT_NAMES:
        raise ValueError(f"unknown script {name!r}")
    return f"{_read(_LIBRARY)}\n{_read(name)}"


class Scripts:
    """Every buffer script registered on one client. Registration does no I/O."""

    def __init__(self, client: redis.Redis) -> None:
        def register(name: str) -> Script:
            return client.register_script(script_source(name))

        self.accept = register("accept")
        self.ack = register("ack")
        self.evaluate_trip = register("evaluate_trip")
        self.evaluate_trip_and_accept = register("evaluate_trip_and_accept")
        self.expired_leases = register("expired_leases")
        self.fail = register("fail")
        self.pop = register("pop")
        self.purge_failed = register("purge_failed")
        self.reclaim = register("reclaim")
        self.requeue = register("requeue")
        self.retry_failed = register("retry_failed")
        self.tripped = register("tripped")


def run_pipelined(
    client: redis.Redis, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[str | int]]]
) -> list[Any]:
    """Run ``script`` once per ``(keys, args)`` in one pipelined round trip; the replies in order.

    redis-py's pipelines check ``SCRIPT EXISTS`` before every execute (a round trip more). Here
    EVALSHA goes out directly, and only the calls answered NOSCRIPT are sent again once the
    script is loaded. Each call stays atomic on its own; the batch is not a transaction.
    """
    pending = list(range(len(calls)))
    replies: list[Any] = [None] * len(calls)
    for _ in range(2):
        pipe = client.pipeline(transaction=False)
        for i in pending:
            keys, args = calls[i]
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        missing = []
        for i, reply in zip(pending, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                missing.append(i)
            elif isinstance(reply, Exception):
                raise reply
            else:
                replies[i] = reply
        if not missing:
            return replies
        script.sha = client.script_load(script.script)
        pending = missing
    raise redis.exceptions.NoScriptError("the server keeps forgetting the script (NOSCRIPT twice)")
