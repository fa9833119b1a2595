"""The drainer on a real RabbitMQ node: a bounded number of AMQP connections, none leaked.

Dramatiq's RabbitmqBroker opens one connection per thread that enqueues and keeps every one it
opened in ``broker.connections``; the test counts the open ones that the drainer added.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pika
import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from dramatiq_mollifier import MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.drain.worker_drainer import WorkerDrainer
from dramatiq_mollifier.telemetry import Telemetry

from .mollifier_helpers import eventually

pytestmark = pytest.mark.rabbitmq

ROUNDS = 3
PER_ROUND = 200


@pytest.fixture
def queue_name() -> str:
    return f"mollifier-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=[False, True], ids=["no-confirms", "confirms"])
def broker(request: pytest.FixtureRequest, rabbitmq_url: str, queue_name: str) -> Iterator[RabbitmqBroker]:
    broker = RabbitmqBroker(url=rabbitmq_url, confirm_delivery=request.param)
    yield broker
    channel = broker.channel
    for name in (queue_name, f"{queue_name}.DQ", f"{queue_name}.XQ"):
        channel.queue_delete(name)
    broker.close()


def open_connections(broker: RabbitmqBroker) -> set[pika.BlockingConnection]:
    return {connection for connection in broker.connections if connection.is_open}


def test_a_drainer_holds_a_bounded_number_of_amqp_connections_across_stop_and_start(
    broker: RabbitmqBroker, queue_name: str, redis_client: redis.Redis, key_prefix: str
) -> None:
    def ingest(n: int) -> None:
        pass

    actor = dramatiq.actor(ingest, broker=broker, queue_name=queue_name, max_retries=0)
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    settings = MollifierSettings(
        enabled=True,
        key_prefix=key_prefix,
        drain_concurrency=16,
        drain_broker_connections=2,
        drain_max_outstanding=0,
        drain_poll_interval_ms=10,
    )
    drainer = WorkerDrainer(settings=settings, buffer=buffer, telemetry=Telemetry())
    # The test's own thread reads the queue: its connection is not the drainer's.
    channel = broker.channel
    before = open_connections(broker)
    added: list[int] = []

    for round_ in range(ROUNDS):
        # Given a backlog for 16 handler threads
        for n in range(PER_ROUND):
            message: dramatiq.Message[Any] = actor.message(round_ * PER_ROUND + n)
            buffer.accept(message.message_id, org_id=f"org{n % 4}", env_id="prod", payload=message.encode())
        # When a drainer drains it, then stops (and starts again for the next round)
        drainer.start(broker)
        try:
            eventually(lambda: buffer.depth() == 0, timeout_s=60, what="the backlog to drain")
        finally:
            assert drainer.stop()
        added.append(len(open_connections(broker) - before))

    # Then it never held more than its 2 connections, and restarts opened no new ones
    assert all(0 < count <= 2 for count in added), added
    # And every drained message reached the queue. Without confirms (Dramatiq's default) the
    # count, read on another connection, can lag the last publishes.
    eventually(
        lambda: channel.queue_declare(queue_name, passive=True).method.message_count == ROUNDS * PER_ROUND,
        timeout_s=10,
        what="every drained message in the queue",
    )


def test_a_chunk_goes_to_rabbitmq_in_one_hand_over_and_each_message_keeps_its_result(
    broker: RabbitmqBroker, queue_name: str
) -> None:
    from dramatiq.middleware import Middleware, MiddlewareError

    from dramatiq_mollifier.drain.amqp_chunks import ChunkedAmqpPublish
    from dramatiq_mollifier.drain.publisher import SharedPublisher, writers_for

    class Refused(MiddlewareError):
        pass

    class RefuseSome(Middleware):
        def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
            if message.args == (1,):
                raise Refused("refused")

    def ingest(n: int) -> None:
        pass

    actor = dramatiq.actor(ingest, broker=broker, queue_name=queue_name, max_retries=0)
    broker.add_middleware(RefuseSome())
    _, enqueue_many = writers_for(broker, connections=1)
    assert enqueue_many is not None
    publisher = enqueue_many.__self__  # type: ignore[attr-defined]
    assert isinstance(publisher, SharedPublisher)
    # The chunk is published with one flush on the publisher thread (see test_drain_amqp_chunks)
    assert isinstance(publisher._publish_many, ChunkedAmqpPublish)
    handed_over: list[int] = []
    submit = publisher._executor.submit

    def counted(fn: Any, *args: Any) -> Any:
        handed_over.append(len(args[0]) if args and isinstance(args[0], list) else 1)
        return submit(fn, *args)

    publisher._executor.submit = counted  # type: ignore[method-assign]

    results = enqueue_many([actor.message(n) for n in range(5)])

    assert handed_over == [5], "one hand-over to the publisher thread for the chunk"
    assert [type(r) for r in results] == [type(None), Refused, type(None), type(None), type(None)]
    eventually(lambda: broker.get_queue_message_counts(queue_name)[0] == 4)


@pytest.mark.parametrize("confirm_delivery", [False, True])
def test_a_drainer_on_a_rabbitmq_broker_without_publish_confirms_warns_that_it_can_lose(
    confirm_delivery: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from dramatiq_mollifier.drain.publisher import writers_for

    # Given a RabbitMQ broker (no connection is opened until it publishes)
    broker = RabbitmqBroker(url="amqp://127.0.0.1:1", confirm_delivery=confirm_delivery)
    try:
        # When a drainer gets its writers for it
        writers_for(broker)
    finally:
        broker.close()
    # Then it warns, naming the fix, exactly when a lost publish would lose the buffered message
    warned = [r for r in caplog.records if "without confirms" in r.getMessage()]
    assert len(warned) == (0 if confirm_delivery else 1)
    assert all("confirm_delivery=True" in r.getMessage() for r in warned)
