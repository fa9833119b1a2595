"""Fork safety of the buffers' clients (gunicorn, uwsgi and other pre-forking servers).

A thread of the parent (a background fold) may have held a pool's lock when the process forked;
redis-py resets a pool only after taking that lock, so the child would wait forever. The child
has one thread, so each pool's locks are replaced rather than awaited (``reset()`` itself takes
the pool's lock in redis-py 8). A cluster client has one pool per node: each is reset; one that
has not connected yet has no pool, only the lock of a connect that may have been under way.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from .clients import is_cluster
from .cluster_client import ClusterClient

__all__ = ["register"]

# The clients of every live buffer.
_clients: weakref.WeakSet[Any] = weakref.WeakSet()


def register(client: Any) -> None:
    """Reset ``client``'s connection pools in a forked child."""
    _clients.add(client)


def _after_fork_in_child() -> None:
    for client in list(_clients):
        if isinstance(client, ClusterClient) and not client.connected:
            client.reset_after_fork()
            continue
        if is_cluster(client):
            nodes = client.get_nodes()
            pools = [node.redis_connection.connection_pool for node in nodes if node.redis_connection]
        else:
            pools = [getattr(client, "connection_pool", None)]
        for pool in pools:
            if pool is not None:
                _reset(pool)


def _reset(pool: Any) -> None:
    for name in ("_fork_lock", "_lock"):
        if hasattr(pool, name):
            setattr(pool, name, threading.RLock())
    reset = getattr(pool, "reset", None)
    if reset is not None:
        reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
