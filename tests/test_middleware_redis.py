"""The middleware on a real RedisBroker, with a real Worker and the drainer it boots."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier import Mollifier
from dramatiq_mollifier.models import STATE_ADMITTED, STATE_OPTION

from .mollifier_helpers import THRESHOLD, add_mollifier, decisions, eventually


@pytest.fixture
def broker(broker_url: str, key_prefix: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=broker_url, namespace=f"dq-{key_prefix}")
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


def add_redis_mollifier(
    broker: dramatiq.Broker, client: redis.Redis, key_prefix: str, **settings: Any
) -> tuple[Mollifier, Any]:
    # These tests run real workers: their drainer runs (as enabled implies) and polls briskly.
    defaults: dict[str, Any] = {"trip_hold_ms": 60_000, "drain_poll_interval_ms": 20, "drainer_enabled": None}
    return add_mollifier(broker, client, key_prefix, **{**defaults, **settings})


def on_redis_broker(broker: RedisBroker, queue_name: str) -> list[dramatiq.Message[Any]]:
    payloads = broker.client.hvals(f"{broker.namespace}:{queue_name}.msgs")
    return [dramatiq.Message.decode(payload) for payload in payloads]


def test_a_burst_puts_exactly_threshold_on_the_redis_broker_and_the_rest_in_the_buffer(
    broker: RedisBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_redis_mollifier(broker, redis_client, key_prefix, drainer_enabled=False)

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def ingest(n: int) -> None: ...

    sent = [ingest.send_with_options(args=(n,), org_id="acme", env_id="prod") for n in range(60)]

    assert all(isinstance(message, dramatiq.Message) for message in sent)
    on_broker = {m.message_id for m in on_redis_broker(broker, ingest.queue_name)}
    sent_ids = {m.message_id for m in sent}
    diverted = sent_ids - on_broker
    assert len(on_broker) == THRESHOLD
    assert on_broker <= sent_ids
    assert mollifier.buffer.depth("acme", "prod") == 60 - THRESHOLD
    assert {m.message_id for m in sent if mollifier.buffer.get(m.message_id) is not None} == diverted
    # A diverted send returns a message that says so, without the id RedisBroker gives what it
    # stores; a message that went to the broker has it
    for m in sent:
        assert m.options.get("mollified", False) is (m.message_id in diverted)
        assert ("redis_message_id" in m.options) is (m.message_id not in diverted)
        if m.message_id in diverted:
            assert m.options["mollifier_reason"] == "per_env_rate"
    assert decisions(reader) == {
        ("pass_through", "below_threshold", True): THRESHOLD,
        ("mollify", "per_env_rate", True): 60 - THRESHOLD,
    }


def test_the_worker_boots_a_drainer_that_delivers_every_diverted_message_exactly_once(
    broker: RedisBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a burst, most of it diverted while no worker runs
    mollifier, reader = add_redis_mollifier(broker, redis_client, key_prefix, trip_threshold=5)
    runs: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(
        broker=broker, queue_name=f"q-{key_prefix}", max_retries=3, min_backoff=10, max_backoff=20
    )
    def ingest(n: int) -> None:
        with lock:
            runs.append(n)
            first_attempt_of_7 = runs.count(7) == 1
        if n == 7 and first_attempt_of_7:
            raise RuntimeError("message 7 fails once, and is retried through the delay queue")

    sent = [ingest.send_with_options(args=(n,), org_id="acme", env_id="prod") for n in range(30)]
    assert mollifier.drainer is None
    assert mollifier.buffer.depth() == 25

    # When a real Worker boots (and with it the drainer) while the env stays tripped
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        assert mollifier.drainer is not None
        eventually(lambda: len(runs) == 31, 15.0)
    finally:
        worker.stop()

    # Then every message ran once (7 twice), none went back to the buffer, nothing is left
    assert sorted(runs) == sorted([*range(30), 7])
    assert mollifier.buffer.depth() == 0
    assert len({m.message_id for m in sent}) == 30
    counted = decisions(reader)
    assert counted[("mollify", "per_env_rate", True)] == 25
    assert counted[("pass_through", "below_threshold", True)] == 5
    # 25 drained re-enqueues; 7's retry (drained, delayed: admitted) and its promotion
    assert counted[("pass_through", "bypass_drained", False)] == 25
    assert counted[("pass_through", "bypass_delayed", False)] == 1
    assert counted[("pass_through", "bypass_admitted", False)] == 1


def test_a_delayed_send_on_redis_is_promoted_by_the_worker_without_being_diverted(
    broker: RedisBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_redis_mollifier(
        broker, redis_client, key_prefix, trip_threshold=0, drainer_enabled=False
    )
    ran = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def later() -> None:
        ran.set()

    later.send_with_options(org_id="acme")  # diverted: the env is tripped
    delayed = later.send_with_options(org_id="acme", delay=100)
    assert delayed.options[STATE_OPTION] == STATE_ADMITTED

    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        assert ran.wait(15)
    finally:
        worker.stop()

    assert mollifier.buffer.depth() == 1
    assert decisions(reader) == {
        ("mollify", "per_env_rate", True): 1,
        ("pass_through", "bypass_delayed", False): 1,
        ("pass_through", "bypass_admitted", False): 1,
    }


@pytest.mark.parametrize("drainer_enabled", [None, False])
def test_the_kill_switch_with_a_buffer_still_full_says_what_delivers_it(
    redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture, drainer_enabled: bool | None
) -> None:
    # A rollback that set MOLLIFIER_ENABLED=false alone (which turns the drainer off too) left
    # the buffered messages undelivered, and nothing in the worker's log said so.
    from dramatiq.brokers.stub import StubBroker

    from dramatiq_mollifier import MollifierSettings
    from dramatiq_mollifier.buffer import MollifierBuffer

    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    for n in range(3):
        buffer.accept(f"m{n}", org_id="acme", env_id="prod", payload=b"x")
    settings = MollifierSettings(enabled=False, key_prefix=key_prefix, drainer_enabled=drainer_enabled)
    middleware = Mollifier(settings, client=redis_client)
    broker = StubBroker()
    broker.add_middleware(middleware)
    with caplog.at_level("WARNING", logger="dramatiq_mollifier.middleware"):
        middleware.after_worker_boot(broker, dramatiq.Worker(broker, worker_threads=1))
        checks = [t for t in threading.enumerate() if t.name == "mollifier-boot-check"]
        for check in checks:
            check.join(10)
    if drainer_enabled is None:
        assert "mollifier.undrained the buffer holds 3 messages" in caplog.text
        assert "MOLLIFIER_DRAINER_ENABLED=true" in caplog.text
    else:  # the drainer is off by choice (a drain process elsewhere): no look, no line
        assert checks == [] and "mollifier.undrained" not in caplog.text
    broker.close()
