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

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import MollifierConfigurationError

__all__ = ["drain_client"]

logger = logging.getLogger(__name__)

# Connection keywords redis-py keeps per pool (its maintenance-notification state and the
# timeouts to restore after a maintenance window): a new pool makes its own.
_POOL_STATE = ("maint_notifications_pool_handler", "orig_", "himport_registry")


def drain_client(client: redis.Redis, *, socket_timeout_ms: int) -> redis.Redis:
    """A client for the server of ``client`` over a pool of its own: socket timeout
    ``socket_timeout_ms``, no retries. A subclass of ``redis.Redis`` keeps its class (built as
    ``type(client)(connection_pool=...)``).

    Raises :class:`MollifierConfigurationError` for a client that is not a ``redis.Redis`` over a
    ``redis.ConnectionPool`` (a cluster client, a wrapper): the drainer cannot give it connections
    of its own, and on the send path's (retries, a short timeout) a retried pop leaves entries
    leased to nobody and the idle wait polls.
    """
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
    own_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return type(client)(connection_pool=own_pool)
