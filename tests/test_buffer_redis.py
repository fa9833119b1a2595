"""The buffer's edge with Redis: scripts, protocols, construction and failures wrapped in our error."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.connection import AbstractConnection

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.buffer.scripts import SCRIPT_NAMES, execute, script_source
from dramatiq_mollifier.embedded import EmbeddedRedis
from dramatiq_mollifier.errors import BufferUnavailableError, MollifierConfigurationError, MollifierError
from dramatiq_mollifier.models import EntryStatus

from .fake_redis import FakeServer
from .layout_helpers import connection_kwargs, entry_key, group
from .mollifier_helpers import wait_for_leases_to_expire


def test_scripts_reload_after_script_flush(buffer: MollifierBuffer, redis_client: redis.Redis) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    redis_client.script_flush()

    assert buffer.accept("m2", org_id="o", env_id="e", payload=b"y")
    redis_client.script_flush()
    assert [e.message_id for e in DrainProtocol(buffer).pop_many("o", "e", 10)] == ["m1", "m2"]
    redis_client.script_flush()
    # pipelined scripts load themselves too
    assert DrainProtocol(buffer).ack_many(["m1", "m2"]) == 2
    redis_client.script_flush()
    assert buffer.accept("m3", org_id="o", env_id="e", payload=b"z")
    popped = DrainProtocol(buffer).pop_many("o", "e", 10)
    redis_client.script_flush()
    assert DrainProtocol(buffer).ack_entries(popped).removed == 1
    redis_client.script_flush()
    assert buffer.evaluate_trip("o", "e", window_ms=1000, threshold=5, hold_ms=100).count == 1


def test_every_operation_works_on_a_resp2_client(
    make_redis_client: Callable[..., redis.Redis], key_prefix: str
) -> None:
    buffer = MollifierBuffer(make_redis_client(protocol=2), key_prefix=key_prefix, lease_ms=20)
    assert buffer.accept("m1", org_id="o", env_id="e", payload=b"\x00\xff")
    decision, accepted = buffer.evaluate_trip_and_accept(
        "m2", org_id="o", env_id="e", payload=b"2", window_ms=1000, threshold=0, hold_ms=1000
    )
    assert (decision.tripped, decision.count, accepted) == (True, 1, True)
    assert buffer.tripped() == [("o", "e")]
    assert buffer.orgs() == ["o"]
    assert buffer.envs("o") == ["e"]
    assert buffer.oldest_created_at("o", "e") is not None
    popped = DrainProtocol(buffer).pop_many("o", "e", 10)
    assert [(e.message_id, e.payload) for e in popped] == [("m1", b"\x00\xff"), ("m2", b"2")]
    wait_for_leases_to_expire(buffer)
    assert sorted(DrainProtocol(buffer).reclaim_expired()) == ["m1", "m2"]
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert DrainProtocol(buffer).fail("m1", code="E", message="m")
    assert [e.last_error for e in buffer.failed("o")] == [("E", "m")]
    assert buffer.retry_failed("m1")
    assert DrainProtocol(buffer).requeue("m2")
    assert buffer.depth() == 2
    entry = buffer.get("m1")
    assert entry is not None
    assert entry.status is EntryStatus.QUEUED
    assert DrainProtocol(buffer).ack_many(["m1"]) == 1
    popped = DrainProtocol(buffer).pop("o", "e")
    assert popped is not None
    assert DrainProtocol(buffer).ack_entries([popped]).removed == 1
    assert buffer.accept("m3", org_id="o", env_id="e", payload=b"3")
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert DrainProtocol(buffer).fail("m3", code="E", message="m")
    assert buffer.purge_failed() == 1
    assert buffer.depth() == 0


def test_from_url_builds_a_bounded_resp3_client(redis_url: str, key_prefix: str) -> None:
    buffer = MollifierBuffer.from_url(redis_url, key_prefix=key_prefix, lease_ms=1234, entry_ttl_s=5)
    try:
        kwargs = connection_kwargs(buffer.client)
        assert kwargs["protocol"] == 3
        assert kwargs["socket_timeout"] == 0.5
        assert kwargs["socket_connect_timeout"] == 0.5
        assert kwargs["decode_responses"] is False
        assert (buffer.key_prefix, buffer.lease_ms, buffer.entry_ttl_s) == (key_prefix, 1234, 5)
        assert buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    finally:
        buffer.client.close()


def test_from_url_refuses_decoded_responses(redis_url: str) -> None:
    with pytest.raises(MollifierConfigurationError, match="decode_responses"):
        MollifierBuffer.from_url(redis_url, decode_responses=True)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"lease_ms": 0}, "lease_ms"), ({"entry_ttl_s": 0}, "entry_ttl_s"), ({"key_prefix": ""}, "key_prefix")],
)
def test_impossible_constructor_values_are_refused(
    redis_client: redis.Redis, kwargs: dict[str, object], name: str
) -> None:
    with pytest.raises(MollifierConfigurationError, match=name):
        MollifierBuffer(redis_client, **kwargs)  # type: ignore[arg-type]


def test_a_redis_that_goes_away_gives_a_prompt_buffer_unavailable_error(
    disposable_redis: EmbeddedRedis,
) -> None:
    # Given a buffer that works
    buffer = MollifierBuffer.from_url(disposable_redis.url)
    assert buffer.accept("m1", org_id="o", env_id="e", payload=b"x")

    # When its Redis stops
    disposable_redis.stop()

    # Then every kind of call fails promptly with a clear error, not a hang
    calls: list[Callable[[], object]] = [
        lambda: buffer.accept("m2", org_id="o", env_id="e", payload=b"x"),
        lambda: buffer.evaluate_trip("o", "e", window_ms=100, threshold=1, hold_ms=100),
        lambda: DrainProtocol(buffer).pop("o", "e"),
        lambda: DrainProtocol(buffer).ack("m1"),
        buffer.depth,
        DrainProtocol(buffer).reclaim_expired,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(BufferUnavailableError, match=r"Redis \w+ failed: ConnectionError") as info:
            call()
        assert time.monotonic() - started < 3
        assert isinstance(info.value, MollifierError)
        assert isinstance(info.value.__cause__, redis.RedisError)

    # And it works again once Redis is back
    disposable_redis.start()
    assert buffer.depth() == 0  # a fresh server without persistence
    buffer.client.close()


@pytest.mark.redis  # how redis-py meets a failing server: rerun with the oldest redis-py
def test_a_hung_redis_times_out_into_buffer_unavailable_error(silent_server: FakeServer) -> None:
    buffer = MollifierBuffer.from_url(silent_server.url, protocol=2)
    started = time.monotonic()

    with pytest.raises(BufferUnavailableError, match="Timeout"):
        buffer.evaluate_trip("o", "e", window_ms=100, threshold=1, hold_ms=100)

    # 500 ms per attempt, one retry: well under the seconds a caller would notice
    assert time.monotonic() - started < 2.5
    buffer.client.close()


def test_wrong_type_replies_are_wrapped(buffer: MollifierBuffer, redis_client: redis.Redis) -> None:
    redis_client.set(group(buffer).orgs, "not a set")
    redis_client.set(group(buffer).depth, "not a hash")

    with pytest.raises(BufferUnavailableError, match="ResponseError"):
        buffer.orgs()
    with pytest.raises(BufferUnavailableError, match="ResponseError"):
        buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    with pytest.raises(BufferUnavailableError, match="ResponseError"):
        buffer.depth()


def test_a_garbled_entry_is_reported_as_an_unexpected_reply(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    redis_client.hset(entry_key(buffer, "m1"), mapping={"org": "o", "env": "e", "status": "EATEN"})

    with pytest.raises(BufferUnavailableError, match="unexpected reply"):
        buffer.get("m1")


def round_trips(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]) -> list[list[str]]:
    """The command names ``action`` sent, grouped by write to the socket (a pipeline is one)."""
    sent: list[list[str]] = []
    original: Callable[..., None] = AbstractConnection.send_packed_command

    def record(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        chunks = command if isinstance(command, list) else [command]
        text = b"".join(c if isinstance(c, bytes) else bytes(c) for c in chunks)  # type: ignore[arg-type]
        # each command is "*<n>\r\n$<len>\r\n<NAME>\r\n..."
        sent.append(
            [name.decode().lower() for name in re.findall(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n", text)]
        )
        original(self, command, check_health)

    with monkeypatch.context() as patch:
        patch.setattr(AbstractConnection, "send_packed_command", record)
        action()
    return sent


def load_scripts(client: redis.Redis) -> None:
    """As in a warm process: the server knows every script already."""
    for name in SCRIPT_NAMES:
        client.script_load(script_source(name))


def test_the_hot_paths_cost_one_round_trip(
    buffer: MollifierBuffer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_scripts(redis_client)

    def trip() -> object:
        return buffer.evaluate_trip("o", "e", window_ms=1_000, threshold=0, hold_ms=1_000)

    def trip_and_accept() -> object:
        return buffer.evaluate_trip_and_accept(
            "m1", org_id="o", env_id="e", payload=b"x", window_ms=1_000, threshold=0, hold_ms=1_000
        )

    assert round_trips(monkeypatch, trip) == [["evalsha"]]
    assert round_trips(monkeypatch, trip_and_accept) == [["evalsha"]]
    assert round_trips(monkeypatch, lambda: buffer.accept("m2", org_id="o", env_id="e", payload=b"")) == [
        ["evalsha"]
    ]


@pytest.mark.single_server(
    reason="counts one server's round trips; on a cluster a lookup by id is a pipeline per node"
)
def test_the_drain_side_round_trips(
    buffer: MollifierBuffer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_scripts(redis_client)
    for n in range(3):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"")
    # The hot path keeps its thread's connection (buffer/held.py): redis-py's own commands open
    # another one, once; warm it up, as in a running process.
    buffer.client.ping()

    # a batch pop is a peek and one script
    assert round_trips(monkeypatch, lambda: DrainProtocol(buffer).pop_many("o", "e", 3)) == [
        ["evalsha"],
        ["evalsha"],
    ]
    # an ack that names the tenant is one script; without it, a lookup first
    assert round_trips(monkeypatch, lambda: DrainProtocol(buffer).ack("m0", org_id="o", env_id="e")) == [
        ["evalsha"]
    ]
    assert round_trips(monkeypatch, lambda: DrainProtocol(buffer).ack("m1")) == [["hmget"], ["evalsha"]]
    # ack_many: one pipelined lookup, one pipelined batch of scripts (no SCRIPT EXISTS)
    assert round_trips(monkeypatch, lambda: DrainProtocol(buffer).ack_many(["m2", "missing"])) == [
        ["hmget", "hmget"],
        ["evalsha"],
    ]


# The hot paths write commands straight to a pooled connection (scripts.execute) --------------
def trip(buffer: MollifierBuffer) -> int:
    return buffer.evaluate_trip("o", "e", window_ms=60_000, threshold=1_000, hold_ms=0).count


@pytest.mark.single_server(reason="kills the one pooled connection of a plain client by CLIENT ID")
def test_a_pooled_connection_the_server_dropped_does_not_surface(redis_url: str, key_prefix: str) -> None:
    buffer = MollifierBuffer.from_url(redis_url, key_prefix=key_prefix)
    admin = redis.Redis.from_url(redis_url)
    try:
        assert trip(buffer) == 1
        pooled = buffer.client.client_id()  # the pool's one idle connection
        assert admin.client_kill_filter(_id=pooled) == 1

        assert trip(buffer) == 2
        assert buffer.client.client_id() != pooled
    finally:
        buffer.client.close()
        admin.close()


@pytest.mark.single_server(reason="the connection a plain client's sending thread keeps")
def test_an_error_reply_keeps_the_pooled_connection(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    counter = buffer.keys.tenant("o", "e").trip_keys[0]
    redis_client.hset(counter, "not", "a counter")
    # The connection the hot path's scripts run on (the one this thread keeps, buffer/held.py)
    connection_id = execute(buffer.client, b"CLIENT", b"ID")

    with pytest.raises(BufferUnavailableError, match="WRONGTYPE"):
        trip(buffer)

    redis_client.delete(counter)
    assert trip(buffer) == 1
    assert execute(buffer.client, b"CLIENT", b"ID") == connection_id


@pytest.fixture
def script_dropping_server() -> Iterator[FakeServer]:
    """Answers +OK to every command, and drops the connection on EVALSHA."""

    def serve(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            if b"EVALSHA" in data:
                conn.close()
                return
            commands = len(re.findall(rb"(?:^|\n)\*\d+\r\n", data))
            conn.sendall(b"+OK\r\n" * commands)

    server = FakeServer(serve)
    yield server
    server.close()


@pytest.mark.redis  # how redis-py meets a failing server: rerun with the oldest redis-py
def test_a_connection_lost_mid_command_is_retried_once_on_a_fresh_connection(
    script_dropping_server: FakeServer,
) -> None:
    buffer = MollifierBuffer.from_url(script_dropping_server.url, protocol=2)

    with pytest.raises(BufferUnavailableError, match="ConnectionError"):
        trip(buffer)

    # The first connection died under the script; from_url allows one retry, on a new one.
    assert len(script_dropping_server.accepted) == 2
    buffer.client.close()


@pytest.mark.single_server(reason="single_connection_client is an option of a plain redis.Redis only")
def test_a_single_connection_client_works_too(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    buffer = MollifierBuffer(client, key_prefix=key_prefix)
    try:
        decision, accepted = buffer.evaluate_trip_and_accept(
            "m1", org_id="o", env_id="e", payload=b"x", window_ms=1_000, threshold=0, hold_ms=1_000
        )
        assert decision.tripped and accepted
        popped = DrainProtocol(buffer).pop("o", "e")
        assert popped is not None and popped.message_id == "m1"
    finally:
        client.close()
