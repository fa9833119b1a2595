"""The middleware on a real RabbitmqBroker (pika): bursts, and publish retries as one message."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pika
import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from .layout_helpers import key_space
from .mollifier_helpers import THRESHOLD, add_mollifier, decisions, total

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def queue_name() -> str:
    return f"mollifier-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def broker(rabbitmq_url: str, queue_name: str) -> Iterator[RabbitmqBroker]:
    broker = RabbitmqBroker(url=rabbitmq_url)
    yield broker
    channel = broker.channel
    for name in (queue_name, f"{queue_name}.DQ", f"{queue_name}.XQ"):
        channel.queue_delete(name)
    broker.close()


def on_rabbitmq(broker: RabbitmqBroker, queue_name: str) -> list[dramatiq.Message[Any]]:
    """Every message on the queue (taken off it, so read once)."""
    messages = []
    channel = broker.channel
    while True:
        method, _, body = channel.basic_get(queue_name, auto_ack=True)
        if method is None:
            return messages
        messages.append(dramatiq.Message.decode(body))


def fail_next_publish(broker: RabbitmqBroker) -> list[str]:
    """Make this thread's channel fail its next publish as a dropped connection would."""
    failures: list[str] = []
    channel = broker.channel
    publish = channel.basic_publish

    def basic_publish(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append("failed")
            raise pika.exceptions.AMQPConnectionError("connection dropped (injected)")
        return publish(*args, **kwargs)

    channel.basic_publish = basic_publish
    return failures


def test_a_burst_puts_exactly_threshold_on_rabbitmq_and_the_rest_in_the_buffer(
    broker: RabbitmqBroker, redis_client: redis.Redis, key_prefix: str, queue_name: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def ingest(n: int) -> None: ...

    sent = [ingest.send_with_options(args=(n,), org_id="acme", env_id="prod") for n in range(50)]

    assert all(isinstance(message, dramatiq.Message) for message in sent)
    on_broker = {message.message_id for message in on_rabbitmq(broker, queue_name)}
    diverted = {message.message_id for message in sent} - on_broker
    assert len(on_broker) == THRESHOLD
    assert len(diverted) == 50 - THRESHOLD
    assert mollifier.buffer.depth("acme", "prod") == 50 - THRESHOLD
    assert {m.message_id for m in sent if mollifier.buffer.get(m.message_id) is not None} == diverted
    assert decisions(reader) == {
        ("pass_through", "below_threshold", True): THRESHOLD,
        ("mollify", "per_env_rate", True): 50 - THRESHOLD,
    }


def test_a_retried_publish_is_one_message_with_one_decision(
    broker: RabbitmqBroker, redis_client: redis.Redis, key_prefix: str, queue_name: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def ingest() -> None: ...

    ingest.send_with_options(org_id="acme")  # opens the channel
    failures = fail_next_publish(broker)

    sent = ingest.send_with_options(org_id="acme")

    assert failures == ["failed"]
    assert [m.message_id for m in on_rabbitmq(broker, queue_name)][-1] == sent.message_id
    assert decisions(reader) == {("pass_through", "below_threshold", True): 2}
    # The trip counter counted the message once, not once per publish attempt (folded now: the
    # local evaluator folds in the background).
    mollifier.gate.trip.flush()  # type: ignore[union-attr]
    assert mollifier_count(redis_client, key_prefix) == 2


def mollifier_count(client: redis.Redis, key_prefix: str) -> int:

    return int(client.get(key_space(client, key_prefix).tenant("acme", "default").trip_counter) or 0)


def test_a_retried_publish_in_dual_write_leaves_one_buffer_entry(
    broker: RabbitmqBroker, redis_client: redis.Redis, key_prefix: str, queue_name: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, mode="dual_write", trip_threshold=0)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def ingest() -> None: ...

    ingest.send_with_options(org_id="acme")
    failures = fail_next_publish(broker)

    sent = ingest.send_with_options(org_id="acme")

    assert failures == ["failed"]
    assert len(on_rabbitmq(broker, queue_name)) == 2
    assert mollifier.buffer.get(sent.message_id) is not None
    assert mollifier.buffer.depth() == 2
    assert decisions(reader) == {("mollify", "per_env_rate", True): 2}
    assert total(reader, "mollifier.buffered") == 2


def test_a_diverted_send_on_rabbitmq_does_not_publish(
    broker: RabbitmqBroker, redis_client: redis.Redis, key_prefix: str, queue_name: str
) -> None:
    mollifier, _ = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def ingest() -> None: ...

    sent = ingest.send_with_options(org_id="acme", env_id="prod")

    assert on_rabbitmq(broker, queue_name) == []
    entry = mollifier.buffer.get(sent.message_id)
    assert entry is not None
    assert dramatiq.Message.decode(entry.payload).queue_name == queue_name
