"""The hot-path scripts run on a connection each thread keeps (``buffer/held.py``): checked out once,
given back when a call fails, when the thread ends, never shared with a forked child, and never
so many that the pool's other users starve."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import redis

from dramatiq_mollifier.buffer import held
from dramatiq_mollifier.buffer.scripts import execute
from dramatiq_mollifier.embedded import EmbeddedRedis
from tests.mollifier_helpers import eventually, in_forked_child

# On a cluster the scripts reach each node through a plain client of its own (cluster_io), whose
# pool these tests are about; here they build that plain client from the server's URL.
pytestmark = pytest.mark.single_server(reason="a plain client's own pool: the connections a thread keeps")

MakeClient = Callable[..., redis.Redis]


def client_id(client: redis.Redis) -> int:
    return int(execute(client, b"CLIENT", b"ID"))


def in_use(pool: redis.ConnectionPool) -> int:
    return len(pool._in_use_connections)


def test_a_thread_keeps_one_connection_across_calls(make_redis_client: MakeClient) -> None:
    client = make_redis_client()
    pool = client.connection_pool

    ids = {client_id(client) for _ in range(20)}

    # One connection served all 20 calls, and stays checked out for the next one
    assert len(ids) == 1
    assert held.held_count(pool) == 1
    assert in_use(pool) == 1
    assert client.client_id() not in ids  # redis-py's own commands use another one


def test_a_thread_gives_its_connection_back_when_it_ends(make_redis_client: MakeClient) -> None:
    client = make_redis_client()
    pool = client.connection_pool
    ids: list[int] = []

    thread = threading.Thread(target=lambda: ids.extend(client_id(client) for _ in range(3)))
    thread.start()
    thread.join()

    assert len(set(ids)) == 1
    eventually(lambda: held.held_count(pool) == 0, what="the ended thread's connection released")
    assert in_use(pool) == 0
    # Back in the pool, open: the next checkout reuses it
    assert client.client_id() == ids[0]


def test_a_failed_call_gives_the_connection_up(disposable_redis: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(disposable_redis.url, socket_timeout=1, retry=None)
    pool = client.connection_pool
    try:
        first = client_id(client)
        # When the server drops the connection under the held one
        client.client_kill_filter(_id=first)
        with pytest.raises(redis.ConnectionError):
            client_id(client)

        # Then it is no longer held, nor in use; the next call checks out a fresh one
        assert held.held_count(pool) == 0
        assert in_use(pool) == 0
        assert client_id(client) != first
        assert held.held_count(pool) == 1
    finally:
        client.close()


def test_an_error_reply_keeps_the_connection(make_redis_client: MakeClient) -> None:
    client = make_redis_client()
    first = client_id(client)

    with pytest.raises(redis.exceptions.NoScriptError):
        execute(client, b"EVALSHA", b"0" * 40, 0)

    assert client_id(client) == first


def test_threads_hold_at_most_a_quarter_of_a_bounded_pool(make_redis_client: MakeClient) -> None:
    # Given a pool of 8 connections: at most 2 held at once
    client = make_redis_client(max_connections=8)
    pool = client.connection_pool
    started, release = threading.Barrier(5, timeout=30), threading.Event()
    ids: list[int] = []

    def sender() -> None:
        ids.append(client_id(client))
        started.wait()
        release.wait(timeout=60)

    # When 4 threads send and stay alive
    # (Daemons, and a wait that times out: a failed assertion must not leave them to hang exit.)
    threads = [threading.Thread(target=sender, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait()

    # Then 2 keep a connection, the other 2 checked out per call and gave theirs back
    try:
        assert held.held_count(pool) == 2
        assert in_use(pool) == 2
    finally:
        release.set()
    for thread in threads:
        thread.join()
    eventually(lambda: held.held_count(pool) == 0, what="the ended threads' connections released")


def test_a_blocking_pool_is_never_held(redis_url: str) -> None:
    # A blocking pool of one connection: a held one would make the next checkout wait, then fail
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=1)
    client = redis.Redis(connection_pool=pool)
    try:
        ids = {client_id(client) for _ in range(3)}
        assert held.held_count(pool) == 0
        assert {client.client_id()} == ids  # redis-py's own command got the same connection
    finally:
        client.close()


def test_a_forked_child_never_uses_the_parents_connection(make_redis_client: MakeClient) -> None:
    client = make_redis_client()
    parent_id = client_id(client)

    status, child_id = in_forked_child(lambda: client_id(client))

    assert status == 0
    assert child_id not in (0, parent_id)
    # The parent's connection still works: the child did not close or reuse it
    assert client_id(client) == parent_id


def test_a_large_pool_is_held_by_at_most_max_held_threads(
    make_redis_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(held, "MAX_HELD", 1)
    client = make_redis_client(max_connections=2**31)
    pool = client.connection_pool
    started, release = threading.Barrier(4, timeout=30), threading.Event()

    def sender() -> None:
        client_id(client)
        started.wait()
        release.wait(timeout=60)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    started.wait()

    try:
        assert held.held_count(pool) == 1
    finally:
        release.set()
    for thread in threads:
        thread.join()
