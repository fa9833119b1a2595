"""Clients for every URL the mollifier takes: one server, Redis Cluster, Sentinel.

- ``redis://``, ``rediss://``, ``unix://``: one server (``redis.Redis.from_url``).
- ``redis+cluster://host:port[,host:port...][/0]``, ``rediss+cluster://...``: a Redis or Valkey
  Cluster, any nodes as the seeds, tried in turn (a ``redis.cluster.RedisCluster``, which
  connects on first use when no seed answers at start: :mod:`.cluster_client`); the slot map is
  refreshed after MOVED, a failover or a connection error, and retries are bounded by the
  ``retry`` given.
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/DB][?options]``
  (``rediss+sentinel`` for TLS to the primary): the primary Sentinel names for SERVICE, looked up
  again after a failover (``redis.sentinel.Sentinel.master_for``). The user and password are the
  primary's; ``sentinel_username`` and ``sentinel_password`` in the query are the Sentinels' (when
  they have ``requirepass``); the other query options go to the primary's connections, as a
  ``redis://`` URL's do.

What each URL means is checked by :func:`~dramatiq_mollifier.settings.redis_url_problem`. The
connections of a one-server, plain-text cluster or Sentinel-managed client look their host up
within their connect timeout (:mod:`.lookups`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from ..errors import MollifierConfigurationError
from ..redis_urls import CLUSTER_SLOT_GROUPS, SENTINEL_AUTH_OPTIONS, split_host_port
from .cluster_client import ClusterClient
from .lookups import BoundedLookupConnection, BoundedLookupSSLConnection

__all__ = ["client_from_url", "is_cluster", "is_cluster_url", "slot_groups_for"]

_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: The port of a Sentinel host given without one in a ``redis+sentinel://`` URL.
DEFAULT_SENTINEL_PORT = 26379
# Keywords RedisCluster does not take (it has its own retry and protocol handling in old versions).
_NOT_FOR_CLUSTER = ("single_connection_client",)


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
        parts = urlsplit(url.replace("+cluster://", "://", 1))
        userinfo, at, hosts = parts.netloc.rpartition("@")
        seeds = hosts.split(",")
        if len(seeds) > 1:
            # Several seeds: discovery tries each in turn, so one that is down does not stop it.
            kwargs["startup_nodes"] = [ClusterNode(*split_host_port(seed, 6379)) for seed in seeds]  # type: ignore[no-untyped-call]
        # A cluster has database 0 only: redis-py refuses a /0 path on some versions.
        first = parts._replace(netloc=userinfo + at + seeds[0], path="")
        if scheme == "redis+cluster":  # (a rediss:// URL sets redis-py's TLS class itself)
            kwargs.setdefault("connection_class", BoundedLookupConnection)
        try:
            return ClusterClient.from_url(first.geturl(), **kwargs)
        except RedisClusterException as exc:
            if "cluster mode is not enabled" not in str(exc).lower():
                raise
            raise MollifierConfigurationError(
                f"redis_url (MOLLIFIER_REDIS_URL): {hosts} is a server outside Redis Cluster; "
                f"a redis+cluster:// URL needs a cluster node, redis:// names a single server"
            ) from exc
    if scheme in _SENTINEL_SCHEMES:
        return _sentinel_client(url, **kwargs)
    if scheme in ("redis", "rediss") and "connection_class" not in kwargs:
        ssl = scheme == "rediss"
        kwargs["connection_class"] = BoundedLookupSSLConnection if ssl else BoundedLookupConnection
    return redis.Redis.from_url(url, **kwargs)


class _SentinelConnection(SentinelManagedConnection, BoundedLookupConnection):
    """redis-py's Sentinel-managed connection keeps its socket after a read timeout (its
    ``read_response`` does not disconnect on error, unlike a plain ``Connection``): the next
    command on it would read the late reply of the one that timed out. This one disconnects."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("disconnect_on_error", True)
        return super().read_response(*args, **kwargs)


class _SentinelSSLConnection(_SentinelConnection, BoundedLookupSSLConnection):
    """:class:`_SentinelConnection` over TLS (``rediss+sentinel://``)."""


def _sentinel_client(url: str, **kwargs: Any) -> redis.Redis:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    hosts = [split_host_port(item, DEFAULT_SENTINEL_PORT) for item in netloc.split(",")]
    path = [part for part in parts.path.split("/") if part]
    service = unquote(path[0])
    db = int(path[1]) if len(path) > 1 else 0
    query = parse_qsl(parts.query)
    # The Sentinels answer one lookup each, within the send path's timeouts and without
    # retries: redis-py's default (retries with backoff) held a send for 8-40 s behind a
    # Sentinel that had hung.
    sentinel_kwargs: dict[str, Any] = {
        name: kwargs[name] for name in ("socket_timeout", "socket_connect_timeout") if name in kwargs
    }
    sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)
    for name, value in query:
        if name in SENTINEL_AUTH_OPTIONS:
            sentinel_kwargs[name.removeprefix("sentinel_")] = value
    # The other query options are the primary's, read as redis-py reads a redis:// URL's.
    primary_query = [(name, value) for name, value in query if name not in SENTINEL_AUTH_OPTIONS]
    options: dict[str, Any] = parse_url("redis://sentinel/?" + urlencode(primary_query))  # type: ignore[no-untyped-call]
    options.pop("host", None)
    ssl = parts.scheme == "rediss+sentinel"
    kwargs.update(options)
    kwargs["connection_class"] = _SentinelSSLConnection if ssl else _SentinelConnection
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call,unused-ignore]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        service, db=db, username=username, password=password, **kwargs
    )
    return client
