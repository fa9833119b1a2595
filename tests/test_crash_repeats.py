"""Redeliveries of attempts that are over, against a real Redis (see ``crash/repeats.py``).

A worker process that dies takes the acks and nacks it had not sent yet with it, and the broker
delivers those messages again. These tests deliver such a repeat by hand, on a StubBroker with
in-process workers: the same message, with the ``retries`` count (and, for RedisBroker, the
``redis_message_id``) of the attempt whose ack or nack was lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.crc import key_slot

from dramatiq_mollifier.crash import CrashRetries
from dramatiq_mollifier.crash.middleware import DEFAULT_REPEAT_WINDOW_MS
from dramatiq_mollifier.crash.store import CrashStore
from dramatiq_mollifier.errors import MollifierConfigurationError

from .crash_helpers import points, run_worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def broker(
    redis_client: redis.Redis, key_prefix: str, tmp_path: Path, reader: InMemoryMetricReader
) -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.add_middleware(
        CrashRetries(
            client=redis_client,
            key_prefix=key_prefix,
            evidence_dir=tmp_path / "evidence",
            install_faulthandler=False,
            meter_provider=MeterProvider(metric_readers=[reader]),
        )
    )
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def delivery(message_id: str, actor_name: str, **options: Any) -> Message[Any]:
    return Message(
        queue_name="default",
        actor_name=actor_name,
        args=(),
        kwargs={},
        options=options,
        message_id=message_id,
    )


def test_a_retried_attempt_delivered_again_is_acked_without_running(
    broker: StubBroker, reader: InMemoryMetricReader
) -> None:
    # Given an actor that fails its first run, so Retries enqueued attempt 1, which then succeeded
    runs: list[int] = []

    @dramatiq.actor(broker=broker, actor_name="flaky", max_retries=3, min_backoff=1, max_backoff=5)
    def flaky() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise ValueError("first run fails")

    message_id = str(uuid.uuid4())
    broker.enqueue(delivery(message_id, "flaky"))
    run_worker(broker)
    assert runs == [0, 1]

    # When attempt 0 is delivered again (its ack died with its worker process)
    broker.enqueue(delivery(message_id, "flaky"))
    run_worker(broker)

    # Then it is acked without running, counted, and nothing is dead-lettered
    assert runs == [0, 1]
    assert broker.dead_letters == []
    assert points(reader, "mollifier.crash_repeats") == {(("kind", "superseded"),): 1}
    # And the attempt after the last retry still runs (it is not over)
    broker.enqueue(delivery(message_id, "flaky", retries=2))
    run_worker(broker)
    assert runs == [0, 1, 2]


def test_a_failed_attempt_redelivered_is_failed_again_without_running_but_a_late_fresh_publish_runs(
    broker: StubBroker, reader: InMemoryMetricReader, redis_client: redis.Redis
) -> None:
    # Given an actor without retries whose message failed and was rejected (RedisBroker publish "p1")
    runs: list[str] = []

    @dramatiq.actor(broker=broker, actor_name="doomed", max_retries=0)
    def doomed() -> None:
        runs.append("ran")
        raise ValueError("always fails")

    message_id = str(uuid.uuid4())
    broker.enqueue(delivery(message_id, "doomed", redis_message_id="p1"))
    run_worker(broker)
    assert runs == ["ran"]

    # When the broker delivers that same publish again (the nack died with its worker process)
    broker.enqueue(delivery(message_id, "doomed", redis_message_id="p1"))
    run_worker(broker)

    # Then the actor does not run again and the message is rejected again, so it is not lost
    assert runs == ["ran"]
    assert [m.message_id for m in broker.dead_letters] == [message_id, message_id]
    assert points(reader, "mollifier.crash_repeats") == {(("kind", "failed"),): 1}

    # And a fresh publish of it within repeat_window_ms (a delay queue publishing it again) too
    broker.enqueue(delivery(message_id, "doomed", redis_message_id="p2"))
    run_worker(broker)
    assert runs == ["ran"]
    assert points(reader, "mollifier.crash_repeats") == {(("kind", "failed"),): 2}

    # But once the window is over (the failure's time moved back by it), a fresh publish of the
    # dead letter (an operator sending it again) runs, while the failed publish still does not
    store = next(m for m in broker.middleware if isinstance(m, CrashRetries)).store
    failed_at = int(redis_client.hget(store.done_key(message_id), "failed_at") or 0)
    redis_client.hset(store.done_key(message_id), "failed_at", failed_at - DEFAULT_REPEAT_WINDOW_MS)
    broker.enqueue(delivery(message_id, "doomed", redis_message_id="p1"))
    broker.enqueue(delivery(message_id, "doomed", redis_message_id="p3"))
    run_worker(broker)
    assert runs == ["ran", "ran"]
    assert points(reader, "mollifier.crash_repeats") == {(("kind", "failed"),): 3}


@pytest.mark.parametrize("key_prefix_value", ["mollifier", "{tenant-a}:mollifier", "app.v2"])
@pytest.mark.parametrize("message_id", ["plain", "with:colon", "{braces}", "ü/%20 space"])
def test_the_concluded_attempts_share_the_records_cluster_slot(
    redis_client: redis.Redis, key_prefix_value: str, message_id: str
) -> None:
    store = CrashStore(redis_client, key_prefix=key_prefix_value, record_ttl_ms=60_000)

    assert key_slot(store.done_key(message_id).encode()) == key_slot(store.message_key(message_id).encode())


@pytest.mark.parametrize("window_ms", [-1, 7 * 86_400_000 + 1])
def test_a_repeat_window_outside_its_bounds_is_refused_by_name(
    redis_client: redis.Redis, window_ms: int
) -> None:
    with pytest.raises(MollifierConfigurationError, match="repeat_window_ms"):
        CrashRetries(client=redis_client, key_prefix="p", repeat_window_ms=window_ms)
