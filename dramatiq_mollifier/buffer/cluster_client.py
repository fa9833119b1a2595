"""The cluster client a ``redis+cluster://`` URL gives: it starts while every seed is down.

redis-py's ``RedisCluster`` connects in its constructor (it asks a seed for the slot map) and
raises when no seed answers, so an app whose mollifier named a cluster could not even be
imported during a cluster outage: a web server could not start, though its sends would only
have failed open. :class:`ClusterClient` keeps such a client unconnected instead, and connects
on first use. Until a seed answers, each use raises :class:`ClusterUnreachable` (a
``redis.ConnectionError``), which every caller already takes for an outage: the send path fails
open, the background checks and the drainer retry. One caller at a time tries to connect, at
most once per :data:`RECONNECT_INTERVAL_MS`; the others fail at once instead of waiting.

The client stays a ``RedisCluster`` (the package routes scripts and picks its drain client by
that type). Its connected attributes are missing until it connects: ``__getattr__``, which
Python calls only for a missing attribute, is where it connects, so a connected client pays
nothing for this.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

__all__ = ["RECONNECT_INTERVAL_MS", "ClusterClient", "ClusterUnreachable"]

logger = logging.getLogger(__name__)

#: After a failed connect, uses fail at once for this long before one tries again, in ms.
RECONNECT_INTERVAL_MS = 1_000


class ClusterUnreachable(RedisClusterException, redis.ConnectionError):
    """No seed of a cluster client has answered yet; raised by each use until one does."""


#: What a failed slot-map discovery raises: no seed answered, or the seeds answered without a
#: full slot map (a cluster being formed; redis-py 5.0 then raises an IndexError).
_DISCOVERY_FAILURES = (RedisClusterException, redis.ConnectionError, redis.TimeoutError, IndexError)
#: What a seed says of a mistake in the URL rather than an outage (redis-py reports each as
#: "cannot be connected" too): a server outside cluster mode, a wrong user or password.
_MISTAKES = ("cluster mode is not enabled", "username-password", "authentication required", "noauth")


def _mistake(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(mistake in text for mistake in _MISTAKES)


class ClusterClient(RedisCluster):
    """A ``RedisCluster`` that connects on first use when no seed answers at construction, and
    whose :meth:`close` also closes the connections of every node's pool (redis-py's leaves them
    open, a node's ``Redis`` not owning its pool, for the garbage collector to close at some
    later moment).

    A mistake in the URL (a seed outside cluster mode, a wrong password) raises at construction
    as ``RedisCluster``'s does; met on a later connect, it is logged at ERROR and fails open.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._arguments = (args, kwargs)
        self._unconnected = True
        self._connecting = threading.Lock()
        self._failed_at = 0.0
        self._failure = ""
        self._mistake_logged = False
        try:
            self._attempt()
        except _DISCOVERY_FAILURES as exc:
            if _mistake(exc):
                raise
            self._failed(exc)
            logger.warning(
                "mollifier.cluster_unreachable no seed of the Redis Cluster gave its slot map (%s): "
                "the client connects on first use",
                exc,
            )

    @property
    def connected(self) -> bool:
        """Whether a seed has answered (the client has its slot map)."""
        return not self.__dict__.get("_unconnected", False)

    def with_options(self, **options: Any) -> ClusterClient:
        """A new client for the same URL and seeds, with ``options`` over this one's keywords
        and the URL's query options (as a connected client's nodes give them).

        A clone of a client that has not connected yet does not try now (it would hold a worker's
        boot for its timeouts behind seeds that accept and never answer): it connects on first
        use, with these keywords.
        """
        args, kwargs = self._arguments
        kwargs = {**kwargs, **options}
        url = kwargs.get("url")
        if url is not None:  # (RedisCluster lets the URL's query options override its keywords)
            parts = urlsplit(url)
            query = [(name, value) for name, value in parse_qsl(parts.query) if name not in options]
            kwargs["url"] = parts._replace(query=urlencode(query)).geturl()
        with self._connecting:  # not half-way through a connect
            if self.connected:
                return ClusterClient(*args, **kwargs)
            clone: ClusterClient = object.__new__(ClusterClient)
            # What RedisCluster's constructor set before it needed a seed (the encoder...),
            # until the connect runs it again with the new keywords.
            clone.__dict__.update(self.__dict__)
        clone._arguments = (args, kwargs)
        clone._connecting = threading.Lock()
        clone._failed_at = 0.0
        return clone

    def reset_after_fork(self) -> None:
        """In a forked child: a connect under way in the parent's thread is not under way here."""
        self._connecting = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        # Reached only for a missing attribute: before the client connected, one that RedisCluster's
        # constructor sets once a seed answers (nodes_manager, commands_parser...).
        if name.startswith("__") or not self.__dict__.get("_unconnected", False):
            raise AttributeError(name)
        self._connect()
        return object.__getattribute__(self, name)

    def _connect(self) -> None:
        refused = ClusterUnreachable(f"no seed of the Redis Cluster has answered yet: {self._failure}")
        if not self._connecting.acquire(blocking=False):
            raise refused
        try:
            if not self._unconnected:
                return  # another thread connected meanwhile
            if time.monotonic() - self._failed_at < RECONNECT_INTERVAL_MS / 1000:
                raise refused
            try:
                self._attempt()
            except _DISCOVERY_FAILURES as exc:
                self._failed(exc)
                if _mistake(exc) and not self._mistake_logged:
                    self._mistake_logged = True  # (a seed that is down may hide it at start)
                    logger.error(
                        "mollifier.cluster_misconfigured a seed in MOLLIFIER_REDIS_URL refuses the "
                        "mollifier (%s): a redis+cluster:// URL needs cluster nodes and their password",
                        exc,
                    )
                raise ClusterUnreachable(str(exc)) from exc
            logger.info("mollifier.cluster_connected a seed of the Redis Cluster answered")
        finally:
            self._connecting.release()

    def _attempt(self) -> None:
        """Run RedisCluster's constructor; on failure, undo what it built after the slot map."""
        args, kwargs = self._arguments
        seeds = kwargs.get("startup_nodes")
        if seeds:  # (RedisCluster appends the URL's host to the list it is given)
            kwargs = {**kwargs, "startup_nodes": [ClusterNode(seed.host, seed.port) for seed in seeds]}  # type: ignore[no-untyped-call]
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            names = list(self.__dict__)
            if "nodes_manager" in names:  # found the slot map, failed after: its pools go too
                for node in self.nodes_manager.nodes_cache.values():
                    if node.redis_connection is not None:
                        node.redis_connection.connection_pool.disconnect()
                for name in names[names.index("nodes_manager") :]:
                    del self.__dict__[name]
            raise
        self._unconnected = False

    def _failed(self, exc: Exception) -> None:
        self._failed_at = time.monotonic()
        self._failure = str(exc)

    def get_connection_kwargs(self) -> dict[str, Any]:
        """The nodes' connection keywords; before a seed answered, the keywords given."""
        if not self.connected:
            return dict(self._arguments[1])
        return super().get_connection_kwargs()  # type: ignore[no-untyped-call,no-any-return,unused-ignore]

    def disconnect_connection_pools(self) -> None:
        if self.connected:  # (else there is no pool)
            super().disconnect_connection_pools()  # type: ignore[no-untyped-call,unused-ignore]

    def close(self) -> None:
        if not self.connected:
            return  # nothing was opened
        manager = self.nodes_manager
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        super().close()
        for node in nodes:
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
