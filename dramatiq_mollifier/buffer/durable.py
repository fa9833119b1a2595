"""Buffer writes a replica has acknowledged (``buffer_wait_replicas``).

Replication is asynchronous: a primary that fails right after accepting an entry may take it
with it, and in ``divert`` mode the buffer held the only copy. With ``buffer_wait_replicas`` = N
each accept is followed, on the same connection and in the same round trip, by
``WAIT N buffer_wait_timeout_ms``. Fewer acknowledgements than N raise
:class:`ReplicaAckError`, a Redis error: the gate fails open and the message goes to the broker
as well. The entry may then survive and be drained too: at-least-once (the same message id
twice) rather than a message lost.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.commands.core import Script

from . import cluster_io
from .clients import is_cluster

__all__ = ["ReplicaAckError", "run_acknowledged"]


class ReplicaAckError(redis.RedisError):
    """A buffer write that fewer replicas than asked acknowledged within the timeout."""


def run_acknowledged(
    client: Any, script: Script, numkeys: int, *keys_and_args: Any, replicas: int, timeout_ms: int
) -> Any:
    """EVALSHA ``script`` then ``WAIT replicas timeout_ms`` on one connection, one round trip."""
    target = cluster_io.node_for(client, keys_and_args[0]) if is_cluster(client) else client
    for _ in range(2):
        pipe = target.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", script.sha, numkeys, *keys_and_args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        reply, acknowledged = pipe.execute(raise_on_error=False)
        if isinstance(reply, redis.exceptions.NoScriptError):
            script.sha = client.script_load(script.script)
            continue
        if isinstance(reply, Exception):
            raise reply
        if isinstance(acknowledged, Exception):
            raise acknowledged
        if int(acknowledged) < replicas:
            raise ReplicaAckError(
                f"{acknowledged} of {replicas} replicas acknowledged the buffer write within "
                f"{timeout_ms} ms (buffer_wait_replicas)"
            )
        return reply
    raise redis.exceptions.NoScriptError("the server keeps forgetting the script (NOSCRIPT twice)")
