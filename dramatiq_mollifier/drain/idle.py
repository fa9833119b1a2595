"""What an idle drainer costs: about one Redis command per second, not ten.

A drainer that finds nothing queued blocks on the buffer's wake-up list (``BLPOP``) instead of
polling every ``drain_poll_interval_ms``. Whatever makes a buffer without queued work have some
(an accept, a requeue, a reclaim, a give-back, an operator's retry) pushes a token there
(``note_queued`` in ``lua/_lib.lua``), so one idle drainer wakes at once and drains; it
passes the token on once it found work, so the next idle drainer joins the burst too. Without a
token a drainer still looks every ``drain_idle_wait_ms``: for leases to reclaim, and any wake-up
that was missed.

``stop`` must not wait for the block to end: :meth:`IdleWait.interrupt` shuts the blocked
connection's socket from the stopping thread, which makes the read fail at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

import redis

from ..buffer.scripts import script_source
from ..settings import IDLE_WAIT_MARGIN_MS, default_of

__all__ = ["IDLE_WAIT_MS", "IdleWait"]

logger = logging.getLogger(__name__)

#: The longest an idle drainer blocks before it looks at the buffer anyway, in milliseconds.
IDLE_WAIT_MS = default_of("drain_idle_wait_ms")


class IdleWait:
    """Blocks on the wake-up list of a buffer until a token arrives, the wait ends or :meth:`interrupt`.

    Parameters:
      client: The drainer's Redis client. Its socket timeout bounds the block (1 s shorter).
      key: The wake-up list (``KeySpace.drain_wake``).
      wait_ms: The longest block, in milliseconds; 0 disables blocking (:attr:`enabled` False).
    """

    def __init__(self, client: redis.Redis, *, key: str, wait_ms: int = IDLE_WAIT_MS) -> None:
        self._client = client
        self._key = key
        timeout_s = client.get_connection_kwargs().get("socket_timeout")
        if timeout_s is not None:
            wait_ms = min(wait_ms, int(timeout_s * 1000) - IDLE_WAIT_MARGIN_MS)
        #: The longest block, in milliseconds (BLPOP gets it in seconds; 0 would block forever,
        #: so 0 here means never block).
        self.wait_ms = max(0, wait_ms)
        #: Whether the last :meth:`wait` failed on a Redis error (the drainer then backs off).
        self.failed = False
        # The push the buffer's scripts make too (lua/_lib.lua: wake_idle_drainer, which bounds the list).
        self._push = client.register_script(script_source("wake"))
        self._lock = threading.Lock()
        self._blocked: Any = None
        self._interrupted = False

    @property
    def enabled(self) -> bool:
        """Whether the drainer blocks when idle (else it polls)."""
        if not isinstance(self._client, redis.Redis):  # (a cluster client has a pool per node)
            return False
        pool = getattr(self._client, "connection_pool", None)
        return self.wait_ms > 0 and isinstance(pool, redis.ConnectionPool)

    def wait(self) -> bool:
        """Block until a token arrives (True) or the wait ends or is interrupted (False).

        Never raises: a Redis error (redis-py 8 connects in ``get_connection``, so a refused
        connect too) ends the wait with False and sets :attr:`failed`, and the drainer backs off.
        """
        pool: redis.ConnectionPool = self._client.connection_pool
        connection: Any
        self.failed = False
        try:
            try:
                connection = pool.get_connection()
            except TypeError:  # redis-py before 5.3 wants the command's name
                connection = pool.get_connection("BLPOP")
        except Exception:
            self.failed = True
            logger.debug("mollifier.drain_error connecting for the wake-up list", exc_info=True)
            return False
        with self._lock:
            if self._interrupted:
                pool.release(connection)
                return False
            self._blocked = connection
        try:
            connection.send_command("BLPOP", self._key, self.wait_ms / 1000)
            return connection.read_response() is not None
        except Exception:
            connection.disconnect()
            with self._lock:
                if not self._interrupted:
                    self.failed = True
                    logger.debug("mollifier.drain_error waiting on the wake-up list", exc_info=True)
            return False
        finally:
            with self._lock:
                self._blocked = None
            pool.release(connection)

    def interrupt(self) -> None:
        """End a :meth:`wait` under way at once (from another thread), and any later one."""
        with self._lock:
            self._interrupted = True
            connection = self._blocked
        sock = getattr(connection, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        """Allow waits again after :meth:`interrupt` (the drainer starts again)."""
        with self._lock:
            self._interrupted = False

    def signal(self) -> None:
        """Push a token: one other idle drainer wakes. Never raises (a lost token costs a wait)."""
        try:
            self._push(keys=[self._key])
        except redis.RedisError as exc:
            logger.debug("mollifier.drainer could not signal idle drainers: %s", exc)
