"""``buffer_wait_replicas``: an accept fewer replicas acknowledged is a buffer failure (the gate
then fails open to the broker), and the entry it wrote stays: at-least-once, never lost.

Real Redis: the session's servers (one server, or the cluster's primaries) have no replicas, so a
wait for one always falls short there; a primary and replica pair of the test's own shows a write
waiting for the replica's acknowledgement and getting it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.health import replica_problem
from dramatiq_mollifier.embedded import EmbeddedRedis
from dramatiq_mollifier.errors import BufferUnavailableError

from .layout_helpers import command_calls, entry_key
from .mollifier_helpers import add_mollifier, eventually


def test_an_accept_no_replica_acknowledged_fails_and_keeps_its_entry(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, wait_replicas=1, wait_timeout_ms=20)

    with pytest.raises(BufferUnavailableError, match="buffer_wait_replicas"):
        buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")

    # The write itself happened before the wait: the entry is there to be drained (at-least-once).
    entry = buffer.get("m1")
    assert entry is not None
    assert entry.payload == b"x"


def test_without_a_wait_an_accept_on_the_same_server_succeeds(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    assert buffer.depth() == 1


@pytest.mark.parametrize(("replicas", "timeout_ms"), [(-1, 10), (17, 10), (1, 0), (1, 10_001)])
def test_impossible_wait_settings_are_refused(
    redis_client: redis.Redis, key_prefix: str, replicas: int, timeout_ms: int
) -> None:
    with pytest.raises(ValueError, match="wait_replicas"):
        MollifierBuffer(
            redis_client, key_prefix=key_prefix, wait_replicas=replicas, wait_timeout_ms=timeout_ms
        )


def test_an_accept_waits_for_a_real_replica_and_gets_its_ack(redis_binary: str, key_prefix: str) -> None:
    # Given a primary with one replica, both on loopback, the replica's link up
    with EmbeddedRedis(redis_binary, extra_args=["--repl-diskless-sync-delay", "0"]) as primary:
        replica_of = ["--replicaof", "127.0.0.1", str(primary.port)]
        with EmbeddedRedis(redis_binary, extra_args=replica_of) as replica:
            client = redis.Redis.from_url(primary.url, socket_timeout=10)
            replica_client = redis.Redis.from_url(replica.url, socket_timeout=10)
            try:
                eventually(
                    lambda: replica_client.info("replication").get("master_link_status") == "up",
                    what="the replica to sync",
                )
                # The startup check counts the replica: one is enough, two are not
                assert replica_problem(client, 1) is None
                assert "has 1 connected replica(s)" in (replica_problem(client, 2) or "")
                buffer = MollifierBuffer(
                    client, key_prefix=key_prefix, wait_replicas=1, wait_timeout_ms=1_000
                )
                assert buffer.accept("m0", org_id="acme", env_id="prod", payload=b"w")  # scripts loaded
                waits = command_calls(client, "wait")

                # When an entry is accepted, it is acknowledged: the replica holds it on return
                assert buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
                assert command_calls(client, "wait") == waits + 1
                assert replica_client.exists(entry_key(buffer, "m1", "acme")) == 1

                # And while the replica cannot acknowledge (stopped), the accept waits out the
                # timeout and fails (the gate fails open), keeping its entry on the primary
                assert replica.pid is not None
                os.kill(replica.pid, signal.SIGSTOP)
                try:
                    started = time.monotonic()
                    with pytest.raises(BufferUnavailableError, match="0 of 1 replicas"):
                        buffer.accept("m2", org_id="acme", env_id="prod", payload=b"y")
                    assert time.monotonic() - started >= 1.0
                finally:
                    os.kill(replica.pid, signal.SIGCONT)
                assert buffer.get("m2") is not None

                # Then once it has caught up, the next accept gets its ack again
                eventually(lambda: client.wait(1, 100) == 1, what="the replica to catch up")
                assert buffer.accept("m3", org_id="acme", env_id="prod", payload=b"z")
                assert (
                    replica_client.exists(entry_key(buffer, "m2", "acme"), entry_key(buffer, "m3", "acme"))
                    == 2
                )
            finally:
                client.close()
                replica_client.close()


def test_a_wait_for_replicas_the_server_lacks_is_reported_at_startup(
    redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Every diverted send would wait out the timeout and fail open: the burst is not smoothed.
    # The session's servers (one, or the cluster's primaries) have no replica.
    broker = StubBroker()
    try:
        with caplog.at_level("WARNING", logger="dramatiq_mollifier.buffer.health"):
            add_mollifier(broker, redis_client, key_prefix, buffer_wait_replicas=1)
            eventually(
                lambda: any("mollifier.replicas_missing" in r.getMessage() for r in caplog.records),
                what="the startup check's warning",
            )
        reports = [r.getMessage() for r in caplog.records if "replicas_missing" in r.getMessage()]
        assert any("WAIT_REPLICAS) is 1" in r and "has 0 connected replica(s)" in r for r in reports)
        assert replica_problem(redis_client, 0) is None  # the default: no wait, nothing to report
    finally:
        broker.close()
