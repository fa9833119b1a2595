"""Scripts on a Redis Cluster at the cost of one server's: straight to the node of the slot.

redis-py's ``RedisCluster`` spends, per command, far more CPU than the command costs the server
(argument inspection, slot lookup under a lock, response callbacks, its pipeline's per-command
bookkeeping: about 0.4 ms of client CPU per pipelined ``EVALSHA`` on a small machine). Every
script of the buffer touches one slot, so its node is known from its first key: the command goes
to that node's plain ``redis.Redis`` (the buffer's direct path, :func:`.scripts.execute`), and a
batch goes to each node as one plain pipeline.

What the node answers MOVED, ASK, TRYAGAIN or CLUSTERDOWN to (the command did not run) is sent
again through ``RedisCluster`` itself, which follows the redirection, retries within its own
bounds and refreshes its slot map. A connection error or timeout is not retried here (a pop must
not run twice; the send path's single retry is the cluster client's own): the slot map is
refreshed in the background so later calls find the new primary after a failover, and the
error is raised at once (the send fails open without waiting for the refresh).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, SlotNotCoveredError, TryAgainError

__all__ = ["REDIRECTED", "node_for", "run_batch", "run_one"]

#: Replies that mean the node did not run the command: safe to send again through the cluster client.
REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError, SlotNotCoveredError)


def _slot(key: Any) -> int:
    return key_slot(key if isinstance(key, bytes) else str(key).encode("utf-8"))


def node_for(client: Any, key: Any) -> redis.Redis:
    """The plain client of the primary that serves ``key``'s slot (from the cached slot map)."""
    node = client.nodes_manager.get_node_from_slot(_slot(key))
    connection: redis.Redis | None = node.redis_connection
    if connection is None:
        connection = client.get_redis_connection(node)
    assert connection is not None
    return connection


# Clients whose slot map is being refreshed (one refresh at a time per client).
_refreshing: set[int] = set()
_refreshing_lock = threading.Lock()


def _refresh(client: Any) -> None:
    """Refresh the slot map in the background: a send that failed must fail open at once, not
    wait for connections to every seed node (a dead one costs its connect timeout)."""
    with _refreshing_lock:
        if id(client) in _refreshing:
            return
        _refreshing.add(id(client))

    def refresh() -> None:
        try:
            with contextlib.suppress(Exception):
                client.nodes_manager.initialize()
        finally:
            with _refreshing_lock:
                _refreshing.discard(id(client))

    threading.Thread(target=refresh, name="mollifier-slot-map", daemon=True).start()


def run_one(client: Any, execute: Callable[..., Any], args: Sequence[Any]) -> Any:
    """``EVALSHA sha numkeys keys... args...`` on the node of its first key."""
    if int(args[2]) == 0:
        command: Callable[..., Any] = client.execute_command
        return command("EVALSHA", *args[1:])
    try:
        node = node_for(client, args[3])
        return execute(node, *args)
    except REDIRECTED:
        command = client.execute_command
        return command("EVALSHA", *args[1:])
    except (redis.ConnectionError, redis.TimeoutError):
        _refresh(client)
        raise


def run_batch(client: Any, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Each ``(sha, numkeys, keys..., args...)`` in ``calls`` as EVALSHA, one plain pipeline per
    node; replies (or exceptions) in order, redirected ones sent again through ``client``."""
    by_node: dict[int, tuple[redis.Redis, list[int]]] = {}
    replies: list[Any] = [None] * len(calls)
    try:
        for i, call in enumerate(calls):
            node = node_for(client, call[2])
            by_node.setdefault(id(node), (node, []))[1].append(i)
    except REDIRECTED:
        by_node = {}
        redirected = list(range(len(calls)))
    else:
        redirected = []
    for node, indexes in by_node.values():
        pipe = node.pipeline(transaction=False)
        for i in indexes:
            pipe.execute_command("EVALSHA", *calls[i])  # type: ignore[no-untyped-call]
        try:
            answers = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            _refresh(client)
            raise
        for i, answer in zip(indexes, answers, strict=True):
            if isinstance(answer, REDIRECTED):
                redirected.append(i)
            else:
                replies[i] = answer
    command: Callable[..., Any] = client.execute_command
    for i in redirected:
        try:
            replies[i] = command("EVALSHA", *calls[i])
        except redis.RedisError as exc:
            replies[i] = exc
    return replies
