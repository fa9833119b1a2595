"""Large messages drain: byte-bounded pops, on the drainer's own connections, through a real worker."""

from __future__ import annotations

import threading

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import _PEEK_SLACK, DrainProtocol
from dramatiq_mollifier.buffer.scripts import _connection_from
from dramatiq_mollifier.drain.connections import drain_client
from dramatiq_mollifier.errors import MollifierConfigurationError
from dramatiq_mollifier.models import EntryStatus

from .layout_helpers import entry_key
from .mollifier_helpers import eventually

ONE_SERVER = pytest.mark.single_server(reason="inspects the pool of a plain redis.Redis client's drain copy")

MB = 1024 * 1024


def test_a_pop_stops_at_its_byte_bound_but_always_takes_one_entry(buffer: MollifierBuffer) -> None:
    for n in range(5):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=bytes(MB))
    protocol = DrainProtocol(buffer)

    # Two of 1 MiB fit in 2.5 MiB, the third would not
    assert [e.message_id for e in protocol.pop_many("o", "e", 10, max_bytes=5 * MB // 2)] == ["m0", "m1"]
    # An entry larger than the bound still comes out, alone
    assert [e.message_id for e in protocol.pop_many("o", "e", 10, max_bytes=1_000)] == ["m2"]
    # No bound: everything left
    assert [e.message_id for e in protocol.pop_many("o", "e", 10)] == ["m3", "m4"]


def test_a_pop_keeps_its_byte_bound_across_its_script_calls(buffer: MollifierBuffer) -> None:
    # Given a small entry, then more references left by expired entries than a pop peeks at, then
    # a large entry: the pop's first script call stops at the large one's id (not peeked)
    buffer.accept("small", org_id="o", env_id="e", payload=bytes(100))
    for n in range(_PEEK_SLACK + 1):
        buffer.accept(f"expired{n}", org_id="o", env_id="e", payload=b"x")
        buffer.client.delete(entry_key(buffer, f"expired{n}", "o"))
    buffer.accept("large", org_id="o", env_id="e", payload=bytes(1_000))

    # When a pop of two entries, 500 bytes at most, runs
    popped = DrainProtocol(buffer).pop_many("o", "e", 2, max_bytes=500)

    # Then its second script call does not take the large entry as a free first one
    assert [e.message_id for e in popped] == ["small"]
    large = buffer.get("large")
    assert large is not None and large.status is EntryStatus.QUEUED


@ONE_SERVER
def test_the_drain_client_has_its_own_timeout_and_never_retries(redis_url: str) -> None:
    send_side = MollifierBuffer.from_url(redis_url).client
    assert send_side.get_connection_kwargs()["socket_timeout"] == 0.5
    client = drain_client(send_side, socket_timeout_ms=7_000)
    try:
        connection = _connection_from(client.connection_pool)  # redis-py 5.0 and 8 alike
        try:
            assert connection.socket_timeout == 7.0
            assert connection.retry._retries == 0  # get_retries() is not in redis-py 5.0
            assert connection.protocol == 3  # the rest of the send side's settings are kept
        finally:
            client.connection_pool.release(connection)
        assert client.connection_pool is not send_side.connection_pool
        assert client.ping()
    finally:
        client.close()
        send_side.close()


def test_twenty_five_messages_of_five_megabytes_drain_through_a_real_worker(
    redis_url: str, broker_url: str, key_prefix: str
) -> None:
    # Given a worker whose Mollifier was built the production way (the send side's client has a
    # 0.5 s socket timeout), and 25 messages of 5 MB diverted into its buffer
    broker = RedisBroker(url=broker_url, namespace=f"{key_prefix}-dramatiq")
    settings = MollifierSettings(
        enabled=True,
        enabled_orgs={"acme"},
        redis_url=redis_url,
        key_prefix=key_prefix,
        trip_threshold=0,
        trip_window_ms=60_000,
        trip_hold_ms=60_000,
        drain_poll_interval_ms=50,
    )
    mollifier = Mollifier(settings)
    broker.add_middleware(mollifier)
    sizes: list[int] = []
    lock = threading.Lock()

    def ingest(blob: str) -> None:
        with lock:
            sizes.append(len(blob))

    actor = dramatiq.actor(ingest, broker=broker, max_retries=0)
    blob = "x" * (5 * 1000 * 1000)
    for _ in range(25):
        actor.send_with_options(args=(blob,), org_id="acme", env_id="prod")
    assert mollifier.buffer.depth() == 25

    # When the worker boots (and its drainer with it)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        # Then every message is processed, and nothing is left or dead-lettered. (At least once: a
        # 5 MB accept whose reply outlasted the send's socket timeout on a loaded machine failed
        # open to the broker with its entry written, and that entry is drained too.)
        eventually(
            lambda: len(sizes) >= 25 and mollifier.buffer.depth() == 0,
            timeout_s=120,
            what="25 large messages to be processed and the buffer emptied",
        )
    finally:
        worker.stop()
        broker.close()
    assert len(sizes) >= 25 and set(sizes) == {len(blob)}
    assert mollifier.buffer.depth() == 0
    assert mollifier.buffer.failed() == []


@ONE_SERVER
def test_a_redis_subclass_gets_connections_of_its_own_and_anything_else_is_refused(redis_url: str) -> None:
    class Instrumented(redis.Redis):
        pass

    # Given a send side whose client is a subclass of redis.Redis
    send_side = Instrumented.from_url(redis_url, socket_timeout=0.5)
    client = drain_client(send_side, socket_timeout_ms=7_000)
    try:
        # Then the drainer's client keeps the class, over a pool of its own with its timeout
        assert type(client) is Instrumented
        assert client.connection_pool is not send_side.connection_pool
        assert client.get_connection_kwargs()["socket_timeout"] == 7.0
        assert client.ping()
    finally:
        client.close()
        send_side.close()

    # And a client it cannot give connections of its own is refused, loudly
    class Wrapper:
        connection_pool = None

    with pytest.raises(
        MollifierConfigurationError, match=r"redis\.Redis client over a redis\.ConnectionPool"
    ):
        drain_client(Wrapper(), socket_timeout_ms=7_000)  # type: ignore[arg-type]
