"""The circuit breaker: a mollifier Redis that stalls or refuses costs a few calls, not every send.

Policy tests drive the breaker with a fake clock; the rest run 1,000 sends (and 1,000 worker
deliveries under ``CrashRetries``) against a loopback server that never answers and a port that
refuses connections, with a real broker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from redis.exceptions import RedisClusterException

from dramatiq_mollifier import CrashRetries
from dramatiq_mollifier.breaker import CircuitBreaker, CircuitOpenError, is_outage
from dramatiq_mollifier.crash.store import client_for
from dramatiq_mollifier.errors import BufferUnavailableError

from .fake_redis import FakeServer
from .mollifier_helpers import add_mollifier, counts, decisions, eventually, fail_opens, metrics

SENDS = 1_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def outage() -> BufferUnavailableError:
    error = BufferUnavailableError("down")
    error.__cause__ = redis.TimeoutError("Timeout reading from socket")
    return error


def test_the_breaker_opens_after_consecutive_outages_and_probes_once_after_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("test", failure_threshold=3, cooldown_ms=1_000, clock=clock)

    for _ in range(2):
        assert breaker.allow()
        breaker.record(outage())
    assert breaker.allow()
    breaker.record_success()  # a success in between: the count starts again
    for _ in range(3):
        assert breaker.allow()
        breaker.record(outage())

    assert breaker.is_open
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # nobody else while it is out
    breaker.record(outage())
    assert not breaker.allow()  # a failed probe: another cool-down
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_success()
    assert not breaker.is_open
    assert all(breaker.allow() for _ in range(10))


def test_an_error_reply_is_not_an_outage() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("test", failure_threshold=1, clock=clock)
    reply = BufferUnavailableError("script failed")
    reply.__cause__ = redis.ResponseError("WRONGTYPE")

    breaker.record(reply)

    assert not is_outage(reply)
    assert is_outage(redis.ConnectionError("refused"))
    assert not breaker.is_open


def test_a_cluster_client_with_no_node_answering_is_an_outage() -> None:
    # redis-py's cluster client raises this, no RedisError, once every node it knew is gone.
    assert is_outage(
        RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node")
    )


def test_a_probe_that_never_reports_is_given_up_on() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("test", failure_threshold=1, cooldown_ms=1_000, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()  # a probe whose caller died without recording anything

    clock.now += 1.0
    assert breaker.allow()


def test_call_refuses_without_calling_while_open() -> None:
    breaker = CircuitBreaker("test", failure_threshold=1, clock=FakeClock())
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise redis.ConnectionError("refused")

    with pytest.raises(redis.ConnectionError):
        breaker.call(failing)
    with pytest.raises(CircuitOpenError):
        breaker.call(failing)
    assert calls == [1]


@pytest.fixture
def broker(broker_url: str, key_prefix: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=broker_url, namespace=f"dq-{key_prefix}")
    yield broker
    broker.flush_all()
    broker.close()


def queue_size(broker: RedisBroker, queue_name: str) -> int:
    return int(broker.client.hlen(f"{broker.namespace}:{queue_name}.msgs"))


@pytest.fixture(params=["stalled", "refused"])
def sick_redis_url(request: pytest.FixtureRequest, silent_server: FakeServer, refused_url: str) -> str:
    """A mollifier Redis that accepts and never answers, or one that refuses connections."""
    return silent_server.url if request.param == "stalled" else refused_url


@pytest.mark.redis
def test_a_thousand_gated_sends_to_a_sick_redis_cost_a_few_calls(
    broker: RedisBroker, sick_redis_url: str, key_prefix: str
) -> None:
    # Given a Mollifier whose own Redis is sick, with a long cool-down
    mollifier, reader = add_mollifier(
        broker, None, key_prefix, redis_url=sick_redis_url, trip_threshold=0, breaker_cooldown_ms=60_000
    )

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def ingest() -> None: ...

    # When 1,000 gated sends go out (half enrolled statically, half needing the runtime flags)
    started = time.monotonic()
    for i in range(SENDS):
        ingest.send_with_options(org_id="acme" if i % 2 else "globex")
    took = time.monotonic() - started

    # Then they all reached the broker, with a few calls' worth of waiting (a call times out
    # after 500 ms; without the breaker a stalled Redis cost about 1 s per send): beyond what as
    # many sends the gate leaves alone cost now (on a loaded machine, seconds), a few timeouts
    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}-plain", mollifier=False)
    def plain() -> None: ...

    started = time.monotonic()
    for _ in range(SENDS):
        plain.send()
    baseline = time.monotonic() - started
    counted = decisions(reader)
    failed = counted[("pass_through", "fail_open_trip", True)]
    print(f"{SENDS} sends took {took:.3f} s, {baseline:.3f} s ungated; {failed} trip calls failed")
    assert 1 <= failed <= 3
    # (one flags read and each failed trip call may wait out a 500 ms timeout)
    assert took < 2 * baseline + 0.6 * (failed + 1) + 0.5
    assert queue_size(broker, ingest.queue_name) == SENDS
    assert counted[("pass_through", "fail_open_breaker", True)] == SENDS // 2 - failed
    assert counted[("pass_through", "not_enrolled", False)] == SENDS // 2
    assert fail_opens(reader)[("breaker",)] == SENDS // 2 - failed
    assert mollifier.breaker.is_open


@pytest.mark.redis
def test_crash_retries_around_a_worker_with_a_sick_redis_lets_every_message_run(
    broker: RedisBroker, sick_redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    # Given a worker with CrashRetries on a sick Redis
    provider, reader = metrics()
    client = client_for(sick_redis_url)
    broker.add_middleware(
        CrashRetries(
            client=client,
            key_prefix=key_prefix,
            evidence_dir=tmp_path,
            install_faulthandler=False,
            meter_provider=provider,
        )
    )
    done = 0
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def work() -> None:
        nonlocal done
        with lock:
            done += 1

    for _ in range(SENDS):
        work.send()
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)

    # When the worker processes them
    started = time.monotonic()
    worker.start()
    try:
        eventually(lambda: done == SENDS, timeout_s=60, what="every message processed")
        took = time.monotonic() - started
    finally:
        worker.stop()
        client.close()

    # Then every message ran, the first few calls waited out their timeout (1 s), the rest were
    # refused at once (without the breaker: 2 calls of 1 s per message, about 500 s on 4 threads;
    # a delivery whose record was never written has nothing to clear: one refusal each)
    print(f"{SENDS} deliveries took {took:.3f} s")
    assert took < 8.0
    stages = counts(reader, "mollifier.crash_fail_open", "stage")
    assert stages[("breaker",)] >= SENDS - 10
    assert sum(stages.values()) - stages[("breaker",)] <= 10
