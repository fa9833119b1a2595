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

__all__ = ["drain_client"]

logger = logging.getLogger(__name__)

# Connection keywords redis-py keeps per pool (its maintenance-notification state and the
# timeouts to restore after a maintenance window): a new pool makes its own.
_POOL_STATE = ("maint_notifications_pool_handler", "orig_", "himport_registry")


def drain_client(client: redis.Redis, *, socket_timeout_ms: int) -> redis.Redis:
    """A client for the server of ``client`` over a pool of its own: socket timeout
    ``socket_timeout_ms``, no retries. ``client`` itself when it is not a plain ``redis.Redis``
    over a connection pool (a cluster client, a wrapper): its settings are then kept, and logged.
    """
    pool = client.connection_pool if type(client) is redis.Redis else None
    if not isinstance(pool, redis.ConnectionPool):
        logger.warning(
            "mollifier.drainer uses the buffer's own client (%s): give it a socket timeout longer "
            "than drain_idle_wait_ms and no retries, or pops of large messages may time out or "
            "run twice",
            type(client).__name__,
        )
        return client
    kwargs = {
        name: value for name, value in pool.connection_kwargs.items() if not name.startswith(_POOL_STATE)
    }
    kwargs.update(socket_timeout=socket_timeout_ms / 1000, retry=Retry(NoBackoff(), 0), retry_on_error=[])
    own_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=own_pool)
