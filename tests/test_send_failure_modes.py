"""The send path where it met trouble in review: stalls under concurrency, errors that are not
Redis's, a resolver's missing env, a cap after a trip, and a key layout not yet checked.

Each test failed before its fix (README "Circuit breaker", "Trip evaluators", "Redis Cluster").
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier import Mollifier, MollifierSettings, Tenant
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.embedded import EmbeddedRedis

from .mollifier_helpers import THRESHOLD, add_mollifier, eventually, metrics

# The send path's socket timeout.
TIMEOUT_S = 0.5


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    yield broker
    broker.close()


@pytest.fixture
def stoppable(disposable_redis: EmbeddedRedis) -> Iterator[EmbeddedRedis]:
    """A server of the test's own that it may stall (SIGSTOP); resumed before it is stopped."""
    yield disposable_redis
    if disposable_redis.pid is not None:
        os.kill(disposable_redis.pid, signal.SIGCONT)


def stall(server: EmbeddedRedis) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)


def resolver(message: dramatiq.Message[Any]) -> Tenant:
    # What a resolver reading an optional env option naturally writes: env None when absent.
    return Tenant(message.options["org_id"], message.options.get("env_id"))


@pytest.mark.parametrize("evaluator", ["exact", "local"])
def test_concurrent_sends_over_the_threshold_on_a_stalled_redis_each_wait_one_timeout_at_most(
    broker: StubBroker, stoppable: EmbeddedRedis, key_prefix: str, evaluator: str
) -> None:
    # Given an env over its threshold in this process (the local evaluator folds such a send in
    # the sending thread, one fold at a time) and a Redis that stalls
    add_mollifier(
        broker, None, key_prefix, redis_url=stoppable.url, trip_threshold=1, trip_evaluator=evaluator
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    ingest.send_with_options(org_id="acme")
    stall(stoppable)

    # When twelve threads send at the same moment
    threads = 12
    barrier = threading.Barrier(threads)
    took: list[float] = []

    def send() -> None:
        barrier.wait()
        started = time.monotonic()
        ingest.send_with_options(org_id="acme")
        took.append(time.monotonic() - started)

    senders = [threading.Thread(target=send) for _ in range(threads)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()

    # Then every message reached the broker, and none waited for the others' folds in turn
    # (they did: 0.5, 1.0, ... 6.0 s). The sends end together, about one timeout in; the bounds
    # are loose because a shared machine once held the whole process 1.3 s (all 12 ended at
    # 1.79 to 1.96 s, CI on 5b0b417): in turn, the spread would be 5.5 s and the last 6 s.
    assert len(broker.queues["default"].queue) == threads + 1
    assert max(took) - min(took) < 2 * TIMEOUT_S, sorted(took)
    assert max(took) < threads / 2 * TIMEOUT_S, sorted(took)


def test_an_error_that_is_not_redis_s_does_not_close_the_breaker_during_a_stall(
    broker: StubBroker, stoppable: EmbeddedRedis, key_prefix: str
) -> None:
    # Given a diverting env whose Redis stalls, and sends alternating between a good message and
    # one whose gating fails before any Redis call (its options do not encode)
    add_mollifier(broker, None, key_prefix, redis_url=stoppable.url, trip_threshold=0)

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    assert ingest.send_with_options(org_id="acme").options.get("mollified")  # the env diverts
    stall(stoppable)
    started = time.monotonic()
    for _ in range(10):
        ingest.send_with_options(org_id="acme")
        with pytest.raises(TypeError):  # the broker's own encoding refuses it, as without us
            ingest.send_with_options(org_id="acme", unencodable=object())
    took = time.monotonic() - started

    # Then the breaker opened after a few timeouts, as if the bad sends were not there (each
    # one counted as Redis answering: 20 sends took 5 s, every good one its full timeout)
    assert took < 6 * TIMEOUT_S


def test_a_resolver_env_of_none_is_the_default_env_and_the_folds_go_on(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a custom resolver that gives env None when the option is absent
    client = redis_client
    provider, _ = metrics()
    mollifier = Mollifier(
        MollifierSettings(
            enabled=True,
            enabled_orgs={"acme"},
            key_prefix=key_prefix,
            trip_threshold=1_000,
            trip_window_ms=5_000,
            drainer_enabled=False,
        ),
        client=client,
        tenant=resolver,
        meter_provider=provider,
    )
    broker.add_middleware(mollifier)

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    # When an env sends five and the org one without an env, and the counts are folded
    for _ in range(5):
        ingest.send_with_options(org_id="acme", env_id="prod")
    ingest.send_with_options(org_id="acme")
    assert mollifier.gate.trip.flush()  # type: ignore[union-attr]

    # Then both reached the fleet's windows (one None env made every fold of the process fail)
    keys = mollifier.buffer.keys
    assert client.get(keys.tenant("acme", "prod").trip_counter) == b"5"
    assert client.get(keys.tenant("acme", "default").trip_counter) == b"1"


@pytest.mark.parametrize("cap", [None, 100_000])
def test_an_env_whose_trip_and_backlog_are_over_passes_again_capped_or_not(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str, cap: int | None
) -> None:
    # Given an env that tripped and was drained, with a cap never reached (its writes then take
    # the capped path: a trip check, then a capped write)
    client = redis_client
    mollifier, _ = add_mollifier(
        broker,
        client,
        key_prefix,
        cap_per_env=cap,
        trip_window_ms=200,
        trip_hold_ms=200,
        trip_fold_interval_ms=20,
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    for _ in range(THRESHOLD + 5):
        ingest.send_with_options(org_id="acme", env_id="prod")
    assert mollifier.buffer.depth("acme", "prod") == 5
    protocol = DrainProtocol(mollifier.buffer)
    while (entry := protocol.pop("acme", "prod")) is not None:
        protocol.ack(entry.message_id)
    tenant_keys = mollifier.buffer.keys.tenant("acme", "prod")
    # the hold (200 ms after the last send over the threshold) and the window (200 ms) lapse
    eventually(lambda: client.exists(tenant_keys.trip_hold, tenant_keys.trip_counter) == 0, what="no trip")

    # When it sends one message far below the threshold
    sent = ingest.send_with_options(org_id="acme", env_id="prod")

    # Then it goes to the broker (capped, it stayed diverted for good)
    assert not sent.options.get("mollified")
    assert mollifier.buffer.depth("acme", "prod") == 0


def test_a_forked_child_checks_the_key_layout_before_it_diverts(
    broker: StubBroker, stoppable: EmbeddedRedis, key_prefix: str
) -> None:
    # Given a fleet whose recorded layout differs from this process's, and a Redis that stalls
    # while this process starts (its startup check cannot answer yet)
    admin = redis.Redis.from_url(stoppable.url)
    admin.set(f"{key_prefix}:layout", "slot_groups=0")
    stall(stoppable)
    add_mollifier(broker, None, key_prefix, redis_url=stoppable.url, slot_groups=1)

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    # When it forks (gunicorn --preload) and the child bursts once Redis answers again
    pid = os.fork()
    if pid == 0:
        diverted = 99
        try:
            probe = redis.Redis.from_url(stoppable.url, socket_timeout=0.2)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    probe.ping()
                    break
                except redis.RedisError:
                    time.sleep(0.05)
            sent = [ingest.send_with_options(org_id="acme", env_id="prod") for _ in range(THRESHOLD + 5)]
            diverted = sum(1 for message in sent if message.options.get("mollified"))
        finally:
            os._exit(diverted)
    assert stoppable.pid is not None
    os.kill(stoppable.pid, signal.SIGCONT)
    _, status = os.waitpid(pid, 0)

    # Then the child checked the layout itself and diverted nothing into keys no drainer reads
    # (it diverted 5: only the parent's startup check knew, and it had not answered at the fork)
    assert os.waitstatus_to_exitcode(status) == 0
    assert list(admin.scan_iter(f"{key_prefix}:{{*}}:entry:*")) == []
