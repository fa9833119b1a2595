"""The buffer's Lua scripts, read from ``lua/`` and registered on a client.

Each ``lua/<verb>.lua`` is one atomic operation with a KEYS/ARGV/returns header. ``lua/_lib.lua``
holds the helpers they share; each script gets the helpers it calls (and the ones those call)
prepended when it is loaded, so a hot script does not define unused functions on every call.
Registration goes through ``client.register_script`` (which computes the SHA1 and does no I/O).
The buffer runs scripts with :func:`run` (EVALSHA written straight to a pooled connection, kept by
the sending thread (:mod:`.held`), and a load on NOSCRIPT after a restart or ``SCRIPT FLUSH``), or
:func:`run_pipelined` for batches.
"""

from __future__ import annotations

import functools
import inspect
import re
import weakref
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from . import cluster_io, held
from .cluster_client import ClusterClient
from .lookups import BoundedLookupConnection, BoundedLookupSSLConnection

__all__ = [
    "SCRIPT_NAMES",
    "Scripts",
    "direct_path_allowed",
    "execute",
    "execute_many",
    "force_command_path",
    "run",
    "run_pipelined",
    "script_source",
]

#: Every script the buffer runs, by file name without ``.lua``.
SCRIPT_NAMES = (
    "accept",
    "accept_capped",
    "ack",
    "ack_draining",
    "evaluate_trip",
    "evaluate_trip_and_accept",
    "cancel",
    "commit_entries",
    "created_at",
    "env_depths",
    "expired_leases",
    "fail",
    "fold_trip_counts",
    "move",
    "peek",
    "pop",
    "purge_failed",
    "queue_heads",
    "reindex_env",
    "reclaim",
    "release",
    "renew",
    "requeue",
    "retry_failed",
    "tripped",
    "wake",
)

_LIBRARY = "_lib"

# The exact client, pool and connection types the direct path knows to be plain redis-py
# (subclasses may override what it bypasses: instrumentation, caching, routing).
_DIRECT_POOLS = (redis.ConnectionPool, redis.BlockingConnectionPool)
_DIRECT_CONNECTIONS = (
    redis.Connection,
    redis.SSLConnection,
    redis.UnixDomainSocketConnection,
    BoundedLookupConnection,
    BoundedLookupSSLConnection,
)
# client -> whether execute() may write straight to its pool (decided once per client).
_direct: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
# cluster client -> whether scripts go straight to the node of their slot (see cluster_io).
_direct_cluster: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


_HELPER = re.compile(r"^local function (\w+)\(", re.MULTILINE)
_EVALSHA = b"EVALSHA"


@functools.cache
def _helpers() -> tuple[tuple[str, str], ...]:
    """``(name, text)`` of each helper of ``_lib.lua`` in file order, with its leading comment.

    The library is a sequence of blocks separated by blank lines; a block that defines a
    ``local function`` is that helper. Helpers only call helpers defined above them.
    """
    found = []
    for block in _read(_LIBRARY).split("\n\n"):
        match = _HELPER.search(block)
        if match is not None:
            found.append((match.group(1), block.strip("\n")))
    return tuple(found)


@functools.cache
def script_source(name: str) -> str:
    """The text sent to Redis for script ``name``: the helpers it uses, then the script."""
    if name not in SCRIPT_NAMES:
        raise ValueError(f"unknown script {name!r}")
    body = _read(name)
    # Walk the library bottom-up: a helper is needed if the script or a needed helper calls it.
    needed_text = body
    kept: list[str] = []
    for helper, text in reversed(_helpers()):
        if re.search(rf"\b{helper}\(", needed_text):
            kept.append(text)
            needed_text += text
    return "\n\n".join([*reversed(kept), body])


class Scripts:
    """Every buffer script registered on one client. Registration does no I/O."""

    def __init__(self, client: redis.Redis) -> None:
        def register(name: str) -> Script:
            return client.register_script(script_source(name))

        self.accept = register("accept")
        self.ack = register("ack")
        self.ack_draining = register("ack_draining")
        self.evaluate_trip = register("evaluate_trip")
        self.evaluate_trip_and_accept = register("evaluate_trip_and_accept")
        self.expired_leases = register("expired_leases")
        self.fail = register("fail")
        self.fold_trip_counts = register("fold_trip_counts")
        self.move = register("move")
        self.peek = register("peek")
        self.pop = register("pop")
        self.purge_failed = register("purge_failed")
        self.reclaim = register("reclaim")
        self.release = register("release")
        self.renew = register("renew")
        self.requeue = register("requeue")
        self.retry_failed = register("retry_failed")
        self.tripped = register("tripped")
        self.wake = register("wake")


def run(client: redis.Redis, script: Script, numkeys: int, *keys_and_args: Any) -> Any:
    """EVALSHA ``script`` with ``numkeys`` keys then args; on NOSCRIPT, load it and run it again.

    The hot paths' way to run a script (see :func:`execute`). Pass keys and args as ``bytes``
    where they can be cached: they are sent as is.
    """
    try:
        return execute(client, _EVALSHA, script.sha, numkeys, *keys_and_args)
    except redis.exceptions.NoScriptError:
        script.sha = client.script_load(script.script)
        return execute(client, _EVALSHA, script.sha, numkeys, *keys_and_args)


def direct_path_allowed(client: Any) -> bool:
    """Whether :func:`execute` may bypass ``client.execute_command`` for ``client``.

    Only for an exact ``redis.Redis`` over an exact ``ConnectionPool`` or
    ``BlockingConnectionPool`` of plain connections, without client-side caching (which the
    direct path would leave stale) and without a wrapped ``execute_command`` (OpenTelemetry's
    and similar instrumentation, which it would skip). Anything else, ``RedisCluster`` included,
    takes redis-py's normal command path.
    """
    if type(client) is not redis.Redis or client.connection is not None:
        return False
    pool = client.connection_pool
    if type(pool) not in _DIRECT_POOLS or pool.connection_class not in _DIRECT_CONNECTIONS:
        return False
    if getattr(pool, "cache", None) is not None or pool.connection_kwargs.get("cache_config"):
        return False
    return not hasattr(type(client).execute_command, "__wrapped__")


_PLAIN_CLUSTERS = (RedisCluster, ClusterClient)


def _plain_cluster(client: Any) -> bool:
    """An exact ``RedisCluster`` (or the package's :class:`~.cluster_client.ClusterClient`) without
    wrapped ``execute_command`` (tracing would be skipped)."""
    return type(client) in _PLAIN_CLUSTERS and not hasattr(type(client).execute_command, "__wrapped__")


def _direct_path(client: Any) -> bool:
    """Whether :func:`execute` writes straight to ``client``'s connections, decided once per
    client (and with it whether a cluster client's scripts go straight to their node)."""
    direct = _direct.get(client)
    if direct is None:
        direct = _direct[client] = direct_path_allowed(client)
        _direct_cluster[client] = _plain_cluster(client)
    return direct


def force_command_path(client: Any) -> None:
    """Make :func:`execute` use ``client.execute_command`` for ``client`` (for tracing users)."""
    _direct[client] = False
    _direct_cluster[client] = False


def execute(client: redis.Redis, *args: Any) -> Any:
    """Send one command on a connection of ``client``'s pool and read the reply, unparsed.

    ``client.execute_command`` costs, on a small machine, about 30 us of CPU per command over
    this (argument checks, observability hooks, response callbacks): as much as a diverted send
    spends in the Redis server. This writes the packed command straight to a pooled connection
    through redis-py's public connection API: the pool's health checks (when the thread checks
    the connection out, :mod:`.held`), the connection's retry policy (a fresh connection after a
    connection error or timeout) and its RESP2/RESP3 parser all apply. Only where
    :func:`direct_path_allowed`, and not after :func:`force_command_path`; otherwise through
    ``execute_command``.
    """
    if not _direct_path(client):
        if args[0] == _EVALSHA and _direct_cluster.get(client, False):
            return cluster_io.run_one(client, execute, args)
        execute_command: Callable[..., Any] = client.execute_command
        if args[0] == _EVALSHA and isinstance(client, RedisCluster):  # routes by a str name
            return execute_command("EVALSHA", *args[1:])
        return execute_command(*args)
    return _send(client.connection_pool, (args,), errors_as_replies=False)[0]


def execute_many(client: redis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send ``commands`` in one round trip, as :func:`execute` sends one: their replies in
    order (unparsed on the direct path, as a pipeline parses them elsewhere), an error reply as
    its ``ResponseError`` (the replies after it still read).

    A drainer's tick reads its window of orgs and their envs so: as redis-py pipelines, they
    took about a third of the tick's client CPU (the pipelines' own bookkeeping, not the
    commands). A lost connection sends them all again under the connection's retry policy, as
    :func:`execute` does. Where :func:`direct_path_allowed` says no, a redis-py pipeline.
    """
    if not commands:
        return []
    if not _direct_path(client):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        return list(pipe.execute(raise_on_error=False))
    return _send(client.connection_pool, commands, errors_as_replies=True)


def _send(
    pool: redis.ConnectionPool, commands: Sequence[Sequence[Any]], *, errors_as_replies: bool
) -> list[Any]:
    # The connection this thread keeps (see held.py), else one checked out for this call.
    kept = held.take(pool, _connection_from)
    connection = kept.connection if kept is not None else _connection_from(pool)
    failed = True
    try:
        packed = [_pack(command, connection.encoder) for command in commands]

        def read() -> Any:
            try:
                return connection.read_response()
            except redis.exceptions.ResponseError as error:
                if not errors_as_replies:
                    raise
                return error

        def send() -> list[Any]:
            # Either call disconnects the connection itself when it fails mid-way.
            connection.send_packed_command(packed)
            return [read() for _ in packed]

        replies: list[Any] = connection.retry.call_with_retry(send, lambda error: connection.disconnect())
        failed = False
        return replies
    except redis.exceptions.ResponseError:
        failed = False  # an error reply (NOSCRIPT): the reply was read, the connection is sound
        raise
    finally:
        if failed:
            # A reply may still be on its way (a read timeout): no later command may read it.
            # A plain Connection has disconnected already; not every connection class does.
            connection.disconnect()
        if kept is not None:
            held.give_back(pool, kept, failed=failed)
        else:
            pool.release(connection)


def _pack(args: Sequence[Any], encoder: Any) -> bytes:
    """A RESP array of bulk strings: ``args`` as ``encoder`` (the connection's) encodes them.

    A ``str`` is encoded here with the encoder's codec rather than through ``encoder.encode``
    (its type checks cost about as much as the rest of the packing): a drainer's ids and keys
    are most of its arguments, about a dozen per drained message.
    """
    codec, errors = encoder.encoding, encoder.encoding_errors
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is str:
            data = arg.encode(codec, errors)
        elif type(arg) is bytes:
            data = arg
        else:
            data = encoder.encode(arg)
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


@functools.cache
def _wants_command_name(pool_type: type[redis.ConnectionPool]) -> bool:
    # redis-py before 5.3 requires get_connection(command_name); later versions warn if given one.
    parameter = inspect.signature(pool_type.get_connection).parameters.get("command_name")
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _connection_from(pool: redis.ConnectionPool) -> Any:
    if _wants_command_name(type(pool)):
        return pool.get_connection("EVALSHA")
    return pool.get_connection()


def run_pipelined(
    client: redis.Redis,
    script: Script,
    calls: Sequence[tuple[Sequence[str | bytes], Sequence[str | int | bytes]]],
) -> list[Any]:
    """Run ``script`` once per ``(keys, args)`` in one pipelined round trip; the replies in order.

    redis-py's pipelines check ``SCRIPT EXISTS`` before every execute (a round trip more). Here
    EVALSHA goes out directly, and only the calls answered NOSCRIPT are sent again once the
    script is loaded. Each call stays atomic on its own; the batch is not a transaction.
    """
    pending = list(range(len(calls)))
    replies: list[Any] = [None] * len(calls)
    _direct_path(client)  # decides _direct_cluster too
    for _ in range(2):
        if _direct_cluster.get(client, False):
            answers = cluster_io.run_batch(
                client, [(script.sha, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in pending]
            )
        else:
            pipe = client.pipeline(transaction=False)
            for i in pending:
                keys, args = calls[i]
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
            answers = pipe.execute(raise_on_error=False)
        missing = []
        for i, reply in zip(pending, answers, strict=True):
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
