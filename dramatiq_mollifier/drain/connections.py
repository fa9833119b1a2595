"""The drainer's own Redis connections: timeouts suited to its work, and no blind retries.

The send path's client waits at most 0.5 s for a reply and retries a command after a connection
error, so that ``send()`` never hangs. Neither suits the drainer: a pop of large payloads takes
longer to read, an idle drainer blocks on its wake-up list, and a pop that redis-py retries after
a lost reply runs twice (the first run's entries then sit leased to nobody until their lease
expires). Every settling script is safe to run twice (owner tokens); the pop is not. So the
drainer talks to the same server over a pool of its own, with its own socket timeout and no
retries: a failed command fails the tick, which the drainer logs and retries with back-off.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import SSLConnection
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from ..buffer.cluster_client import ClusterClient
from ..errors import MollifierConfigurationError

__all__ = ["drain_client"]

logger = logging.getLogger(__name__)

# Connection keywords redis-py keeps per pool (its maintenance-notification state and the
# timeouts to restore after a maintenance window): a new pool makes its own.
_POOL_STATE = ("maint_notifications_pool_handler", "orig_", "himport_registry")


def drain_client(client: Any, *, socket_timeout_ms: int) -> Any:
    """A client for the server of ``client`` over a pool of its own: socket timeout
    ``socket_timeout_ms``, no retries. A subclass of ``redis.Redis`` keeps its class (built as
    ``type(client)(connection_pool=...)``).

    Raises :class:`MollifierConfigurationError` for a client that is not a ``redis.Redis`` over a
    ``redis.ConnectionPool`` (a cluster client, a wrapper): the drainer cannot give it connections
    of its own, and on the send path's (retries, a short timeout) a retried pop leaves entries
    leased to nobody and the idle wait polls.
    """
    if isinstance(client, RedisCluster):
        return _cluster_drain_client(client, socket_timeout_ms=socket_timeout_ms)
    pool = getattr(client, "connection_pool", None)
    if not isinstance(client, redis.Redis) or not isinstance(pool, redis.ConnectionPool):
        raise MollifierConfigurationError(
            f"the drainer needs a redis.Redis client over a redis.ConnectionPool to open connections "
            f"of its own (socket timeout drain_socket_timeout_ms, no retries); got {type(client).__name__} "
            f"over {type(pool).__name__}"
        )
    kwargs = {
        name: value for name, value in pool.connection_kwargs.items() if not name.startswith(_POOL_STATE)
    }
    kwargs.update(socket_timeout=socket_timeout_ms / 1000, retry=Retry(NoBackoff(), 0), retry_on_error=[])
    if isinstance(pool, SentinelConnectionPool):  # the primary is looked up again after a failover
        kwargs.pop("connection_pool", None)
        own_pool: redis.ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name, pool.sentinel_manager, connection_class=pool.connection_class, **kwargs
        )
    else:
        own_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return type(client)(connection_pool=own_pool)


def _cluster_drain_client(client: RedisCluster, *, socket_timeout_ms: int) -> RedisCluster:
    """A cluster client of its own over the same nodes: socket timeout ``socket_timeout_ms`` and no
    retry after a connection error or timeout (a pop must not run twice). Redirections (MOVED,
    ASK) and TRYAGAIN are still followed: the server did not run the command.

    Before any seed answered (a worker booted during a cluster outage), the nodes are not known
    yet: the drain client is then one for the same URL and seeds, which connects on first use."""
    if isinstance(client, ClusterClient) and not client.connected:
        return client.with_options(socket_timeout=socket_timeout_ms / 1000, retry=Retry(NoBackoff(), 0))
    kwargs = {
        name: value
        for name, value in client.nodes_manager.connection_kwargs.items()
        if not name.startswith(_POOL_STATE)
        # (connection_class: RedisCluster built from nodes hands it to Redis(), which takes none)
        and name not in ("host", "port", "retry", "retry_on_error", "connection_class")
    }
    kwargs.update(socket_timeout=socket_timeout_ms / 1000, retry=Retry(NoBackoff(), 0))
    if issubclass(client.nodes_manager.connection_kwargs.get("connection_class", object), SSLConnection):
        kwargs["ssl"] = True  # a rediss+cluster:// URL says TLS by its class alone
    nodes = [ClusterNode(node.host, node.port) for node in client.get_nodes()]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, **kwargs)
