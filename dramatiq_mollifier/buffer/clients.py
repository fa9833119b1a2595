"""Clients for every URL the mollifier takes: one server, Redis Cluster, Sentinel.

- ``redis://``, ``rediss://``, ``unix://``: one server (``redis.Redis.from_url``).
- ``redis+cluster://host:port[/0]``, ``rediss+cluster://...``: a Redis or Valkey Cluster, any node
  as the seed (``redis.cluster.RedisCluster``); the slot map is refreshed after MOVED, a
  failover or a connection error, and retries are bounded by the ``retry`` given.
- ``redis+sentinel://[:password@]host:port[,host:port...]/SERVICE[/DB]`` (``rediss+sentinel``
  for TLS to the primary): the primary Sentinel names for SERVICE, looked up again after a
  failover (``redis.sentinel.Sentinel.master_for``).

What each URL means is checked by :func:`~dramatiq_mollifier.settings.redis_url_problem`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from ..redis_urls import CLUSTER_SLOT_GROUPS

__all__ = ["ClusterClient", "client_from_url", "is_cluster", "is_cluster_url", "slot_groups_for"]

_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: The port of a Sentinel host given without one in a ``redis+sentinel://`` URL.
DEFAULT_SENTINEL_PORT = 26379
# Keywords RedisCluster does not take (it has its own retry and protocol handling in old versions).
_NOT_FOR_CLUSTER = ("single_connection_client",)


class ClusterClient(RedisCluster):
    """The ``RedisCluster`` a cluster URL gives: its :meth:`close` also closes the connections of
    every node's pool. redis-py's leaves them open (a node's ``Redis`` does not own its pool), for
    the garbage collector to close at some later moment."""

    def close(self) -> None:
        manager = getattr(self, "nodes_manager", None)
        nodes = []
        if manager is not None:
            nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        super().close()
        for node in nodes:
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return urlsplit(url).scheme in _CLUSTER_SCHEMES


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


def slot_groups_for(slot_groups: int | None, client: Any) -> int:
    """``slot_groups`` as set, else 16 for a cluster client, else 0 (today's key names)."""
    if slot_groups is not None:
        return slot_groups
    return CLUSTER_SLOT_GROUPS if is_cluster(client) else 0


def client_from_url(url: str, **kwargs: Any) -> Any:
    """A client for ``url`` (any scheme above); ``kwargs`` go to the client (timeouts, retry...)."""
    scheme = urlsplit(url).scheme
    if scheme in _CLUSTER_SCHEMES:
        for name in _NOT_FOR_CLUSTER:
            kwargs.pop(name, None)
        plain = url.replace("+cluster://", "://", 1)
        # A cluster has database 0 only: redis-py refuses a /0 path on some versions.
        parts = urlsplit(plain)
        return ClusterClient.from_url(parts._replace(path="").geturl(), **kwargs)
    if scheme in _SENTINEL_SCHEMES:
        return _sentinel_client(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def _sentinel_client(url: str, **kwargs: Any) -> redis.Redis:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    password = unquote(parts.password) if parts.password else None
    hosts = []
    for item in netloc.split(","):
        host, sep, port = item.rpartition(":")
        hosts.append((host, int(port)) if sep else (item, DEFAULT_SENTINEL_PORT))
    path = [part for part in parts.path.split("/") if part]
    service = unquote(path[0])
    db = int(path[1]) if len(path) > 1 else 0
    sentinel_kwargs = {
        name: kwargs[name] for name in ("socket_timeout", "socket_connect_timeout") if name in kwargs
    }
    if parts.scheme == "rediss+sentinel":
        kwargs["ssl"] = True
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, password=password, **sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(service, db=db, password=password, **kwargs)  # type: ignore[no-untyped-call]
    return client
