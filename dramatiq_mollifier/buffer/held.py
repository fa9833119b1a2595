"""A connection each sending thread keeps checked out of a plain pool, for the hot-path scripts.

redis-py's ``ConnectionPool.get_connection`` and ``release`` cost, on a small machine, about
50 us per command: a lock, observability counters, and a readiness check (``can_read``: a poll of
the socket, three system calls) at every checkout. That is as much as the rest of a diverted
send's client work. The direct path (:func:`~.scripts.execute`) runs on a connection its thread
keeps instead, checked out once through ``get_connection`` and all its checks, and given back
to the pool:

- when a call on it fails (the next call checks a fresh one out: a connection that timed out
  or broke mid-reply is never used again, as redis-py itself disconnects it);
- when the thread ends (its thread-local copy is dropped);
- never in a forked child: a connection held by the parent is forgotten there (the child's
  pool was reset at the fork, see ``store.py``).

At most a quarter of the pool's ``max_connections`` (and at most :data:`MAX_HELD`) are held at a
time, so threads holding connections never starve the pool's other users (the drainer, the
rules refresh) nor open a connection per thread of a large thread pool. A thread beyond that,
any :class:`~redis.BlockingConnectionPool` (whose users wait for a connection) and a re-entrant
call (the held connection is busy in this thread) check out per call as before.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import redis

__all__ = ["MAX_HELD", "MAX_HELD_SHARE", "give_back", "held_count", "take"]

#: The share of a pool's ``max_connections`` that threads may hold at once: a quarter.
MAX_HELD_SHARE = 4
#: The most connections of one pool that threads hold at once, whatever its size.
MAX_HELD = 64


class _Held:
    """One thread's connection of one pool; releases it when dropped (the thread ended)."""

    __slots__ = ("__weakref__", "busy", "connection", "pid", "pool")

    def __init__(self, pool: redis.ConnectionPool, connection: Any) -> None:
        self.pool = weakref.ref(pool)
        self.connection = connection
        self.pid = os.getpid()
        self.busy = False

    def release(self) -> None:
        connection, self.connection = self.connection, None
        pool = self.pool()
        if connection is None or self.pid != os.getpid():
            return  # a forked child: the connection is the parent's
        state = _states.get(pool) if pool is not None else None
        if state is not None:
            with state.lock:
                state.count -= 1
        if pool is None:
            connection.disconnect()  # the pool is gone: close the socket
            return
        # At interpreter shutdown, or with a pool torn down, there is nothing left to give back to.
        with contextlib.suppress(Exception):
            pool.release(connection)

    def __del__(self) -> None:
        # At interpreter shutdown there is nothing to give back, and the pool's lock may be held
        # forever by a daemon thread that finalization stopped inside it: giving back would hang
        # the exit (a drainer process did, after SIGTERM). The socket closes with the process.
        with contextlib.suppress(Exception):
            if not sys.is_finalizing():
                self.release()


class _PoolState:
    """The threads' held connections of one pool."""

    __slots__ = ("count", "limit", "local", "lock")

    def __init__(self, limit: int) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.count = 0
        self.limit = limit


# pool -> its state (None: the pool's connections are never held).
_states: weakref.WeakKeyDictionary[Any, _PoolState | None] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def _state_of(pool: Any) -> _PoolState | None:
    try:
        return _states[pool]
    except KeyError:
        pass
    with _states_lock:
        if pool not in _states:
            limit = 0
            if type(pool) is redis.ConnectionPool:
                limit = min(int(pool.max_connections) // MAX_HELD_SHARE, MAX_HELD)
            _states[pool] = _PoolState(limit) if limit > 0 else None
        return _states[pool]


def take(pool: Any, checkout: Callable[[Any], Any]) -> _Held | None:
    """This thread's held connection of ``pool``, marked busy (hand it back with :func:`give_back`);
    None when this call must check one out of the pool itself. ``checkout(pool)`` checks a
    connection out (``get_connection``, whose signature varies across redis-py versions)."""
    state = _state_of(pool)
    if state is None:
        return None
    held: _Held | None = getattr(state.local, "held", None)
    if held is not None:
        if held.pid != os.getpid():  # a forked child: forget the parent's connection
            held.connection = None
            held = state.local.held = None
        elif held.busy:
            return None
    if held is None:
        with state.lock:
            if state.count >= state.limit:
                return None
            state.count += 1
        try:
            connection = checkout(pool)
        except BaseException:
            with state.lock:
                state.count -= 1
            raise
        held = state.local.held = _Held(pool, connection)
    held.busy = True
    return held


def give_back(pool: Any, held: _Held, *, failed: bool) -> None:
    """The call on ``held`` is over. A failed call gives the connection back to the pool (the next
    call checks out a fresh one, through the pool's checks)."""
    held.busy = False
    if failed:
        state = _states.get(pool)
        if state is not None and getattr(state.local, "held", None) is held:
            state.local.held = None
        held.release()


def _after_fork_in_child() -> None:
    # The parent's threads and their connections did not come along; a lock one of them held
    # would stay held forever.
    for state in list(_states.values()):
        if state is not None:
            state.lock = threading.Lock()
            state.count = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def held_count(pool: Any) -> int:
    """How many connections of ``pool`` threads hold now (for tests and diagnostics)."""
    state = _states.get(pool)
    return state.count if state is not None else 0
