"""Drained chunks onto a real RabbitMQ node: one flush (and one wait for confirms) per chunk, each
message keeping its own result, a lost connection retried."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.io_services_utils import _AsyncTransportBase

from dramatiq_mollifier.drain.amqp_chunks import JOINED_BYTES, ChunkedAmqpPublish, chunked_publish_for
from dramatiq_mollifier.drain.failures import is_unavailable

from .mollifier_helpers import eventually
from .servers import RabbitmqServer, find_rabbitmq_server, unavailable

#: The broker of the oversized-message test refuses messages larger than this.
MAX_MESSAGE_SIZE = 65_536

pytestmark = pytest.mark.rabbitmq


@pytest.fixture(params=[True, False], ids=["confirms", "no-confirms"])
def broker(request: pytest.FixtureRequest, rabbitmq_url: str) -> Iterator[RabbitmqBroker]:
    broker = RabbitmqBroker(url=rabbitmq_url, confirm_delivery=request.param)
    yield broker
    broker.close()


def declare(broker: RabbitmqBroker, *names: str) -> list[dramatiq.Actor[Any, Any]]:
    def ingest(n: int) -> None:
        pass

    return [
        dramatiq.actor(ingest, broker=broker, queue_name=name, actor_name=f"ingest_{name}") for name in names
    ]


def ready_count(broker: RabbitmqBroker, name: str) -> int:
    return int(broker.channel.queue_declare(name, passive=True).method.message_count)


def delete(broker: RabbitmqBroker, *names: str) -> None:
    for name in names:
        for queue_name in (name, f"{name}.DQ", f"{name}.XQ"):
            broker.channel.queue_delete(queue_name)


def flushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts BlockingChannel._flush_output calls (each runs the I/O loop until written)."""
    calls: list[int] = []
    original = BlockingChannel._flush_output

    def counted(self: BlockingChannel, *waiters: Any) -> Any:
        calls.append(1)
        return original(self, *waiters)

    monkeypatch.setattr(BlockingChannel, "_flush_output", counted)
    return calls


def sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the socket sends of pika's transports (one per queued buffer, partial ones again)."""
    calls: list[int] = []
    original = _AsyncTransportBase._sigint_safe_send

    def counted(sock: Any, data: bytes) -> int:
        calls.append(len(data))
        return int(original(sock, data))

    monkeypatch.setattr(_AsyncTransportBase, "_sigint_safe_send", staticmethod(counted))
    return calls


def test_a_chunk_is_published_with_one_flush_and_every_message_reaches_its_queue(
    broker: RabbitmqBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two queues' actors and a chunk of 150 messages for them
    first, second = (f"mollifier-test-{uuid.uuid4().hex[:10]}" for _ in range(2))
    actor_a, actor_b = declare(broker, first, second)
    publish = chunked_publish_for(broker)
    assert isinstance(publish, ChunkedAmqpPublish)
    messages = [(actor_a if n % 3 else actor_b).message(n) for n in range(150)]
    # The channel (and confirm mode) set up, the queues declared (three declares each)
    assert publish([actor_a.message(-1), actor_b.message(-1)]) == [None, None]
    try:
        calls = flushes(monkeypatch)
        sent = sends(monkeypatch)
        # When the chunk is published
        results = publish(messages)
        # Then the I/O loop ran once for the whole chunk (message by message: 150 times), waiting
        # in that one run for all of their confirms, whatever the broker's confirm_delivery
        assert len(calls) == 1
        # And its 450 frames (method, header, body each) left in a few socket sends, not one each
        assert 1 <= len(sent) <= 4, f"{len(sent)} sends"
        assert results == [None] * 150
        # And every message is in its queue, in the chunk's order
        expected = {
            first: 1 + sum(1 for n in range(150) if n % 3),
            second: 1 + sum(1 for n in range(150) if not n % 3),
        }
        counts = lambda: {name: ready_count(broker, name) for name in expected}  # noqa: E731
        eventually(lambda: counts() == expected, what=f"{expected} messages, not {counts()}")
        channel = broker.channel
        got = []
        for _ in range(expected[first]):
            _, _, body = channel.basic_get(first, auto_ack=True)
            assert body is not None
            got.append(dramatiq.Message.decode(body).args[0])
        assert got == [-1] + [n for n in range(150) if n % 3]
    finally:
        delete(broker, first, second)


def test_large_messages_leave_in_bounded_sends_and_arrive_whole_in_order(
    broker: RabbitmqBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a chunk of 12 messages of 20 KB each (36 frames, 240 KB)
    name = f"mollifier-test-{uuid.uuid4().hex[:10]}"
    (actor,) = declare(broker, name)
    publish = chunked_publish_for(broker)
    assert isinstance(publish, ChunkedAmqpPublish)
    assert publish([actor.message(-1, "")]) == [None]
    messages = [actor.message(n, str(n) * (20_000 // len(str(n)))) for n in range(12)]
    try:
        sent = sends(monkeypatch)
        # When the chunk is published
        assert publish(messages) == [None] * 12
        # Then its frames were joined into sends of at most JOINED_BYTES, far fewer than frames
        assert max(sent) <= JOINED_BYTES
        assert 4 <= len(sent) <= 12, f"{len(sent)} sends"
        # And every message arrived whole, in order
        eventually(lambda: ready_count(broker, name) == 13, what="13 messages on the queue")
        got = []
        for _ in range(13):
            _, _, body = broker.channel.basic_get(name, auto_ack=True)
            assert body is not None
            got.append(dramatiq.Message.decode(body).args)
        assert got == [(-1, "")] + [(n, str(n) * (20_000 // len(str(n)))) for n in range(12)]
    finally:
        delete(broker, name)


def test_with_confirms_a_message_for_a_deleted_queue_goes_through_enqueue_which_declares_it_again(
    rabbitmq_url: str,
) -> None:
    broker = RabbitmqBroker(url=rabbitmq_url, confirm_delivery=True)
    kept, gone = (f"mollifier-test-{uuid.uuid4().hex[:10]}" for _ in range(2))
    try:
        actor_kept, actor_gone = declare(broker, kept, gone)
        publish = ChunkedAmqpPublish(broker)
        # Given a queue the broker declared once and someone deleted since
        assert publish([actor_kept.message(0), actor_gone.message(0)]) == [None, None]
        broker.channel.queue_delete(gone)
        # When a chunk holds a message for it among others
        results = publish([actor_kept.message(1), actor_gone.message(1), actor_kept.message(2)])
        # Then the broker returned it unroutable, and enqueue (which declares the queue again, as
        # it does for its own unroutable publishes) put it there: nothing failed, nothing doubled
        assert results == [None, None, None]
        eventually(lambda: (ready_count(broker, kept), ready_count(broker, gone)) == (3, 1))
    finally:
        delete(broker, kept, gone)
        broker.close()


def test_a_message_pika_cannot_encode_fails_alone_as_enqueue_fails_it(broker: RabbitmqBroker) -> None:
    name = f"mollifier-test-{uuid.uuid4().hex[:10]}"
    (actor,) = declare(broker, name)
    publish = ChunkedAmqpPublish(broker)
    try:
        # Given a chunk whose middle message has a priority AMQP cannot carry (one octet)
        messages = [actor.message(n) for n in range(5)]
        messages[2].options["broker_priority"] = 256
        # When it is published
        results = publish(messages)
        # Then that message fails with what enqueue raises for it, and the others are in, once
        assert [r is None for r in results] == [True, True, False, True, True]
        with pytest.raises(type(results[2])):
            broker.enqueue(
                actor.message(
                    9,
                ).copy(options={"broker_priority": 256})
            )
        eventually(lambda: ready_count(broker, name) == 4)
    finally:
        delete(broker, name)


def test_a_lost_connection_is_replaced_and_the_chunk_still_arrives(broker: RabbitmqBroker) -> None:
    name = f"mollifier-test-{uuid.uuid4().hex[:10]}"
    (actor,) = declare(broker, name)
    publish = ChunkedAmqpPublish(broker)
    try:
        assert publish([actor.message(0)]) == [None]
        # Given the thread's connection, which the publisher's channel lives on, closed under it
        broker.connection.close()
        # When the next chunk is published
        results = publish([actor.message(n) for n in range(1, 21)])
        # Then it goes out on a new connection, every message with it
        assert results == [None] * 20
        eventually(lambda: ready_count(broker, name) == 21)
    finally:
        delete(broker, name)


def test_a_broker_that_cannot_be_reached_fails_each_message_of_the_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:1/%2F")
    attempts: list[int] = []
    original = RabbitmqBroker.declare_queue

    def counted(self: RabbitmqBroker, queue_name: str, *, ensure: bool = False) -> None:
        attempts.append(1)
        original(self, queue_name, ensure=ensure)

    try:
        (actor,) = declare(broker, "mollifier-test-unreachable")
        monkeypatch.setattr(RabbitmqBroker, "declare_queue", counted)
        broker.queues_pending.add("mollifier-test-unreachable")
        results = ChunkedAmqpPublish(broker)([actor.message(0), actor.message(1)])
        # The chunk's declare gave up (after its own three connection attempts), then the first
        # message's enqueue did: the second fails with its error without waiting as long again
        assert len(attempts) == 2
        assert all(isinstance(r, dramatiq.errors.ConnectionClosed) for r in results), results
    finally:
        broker.close()


def test_with_confirms_messages_the_broker_nacks_end_as_enqueue_ends_them(rabbitmq_url: str) -> None:
    broker = RabbitmqBroker(url=rabbitmq_url, confirm_delivery=True)
    name = f"mollifier-test-{uuid.uuid4().hex[:10]}"
    try:
        (actor,) = declare(broker, name)
        # Given a queue that holds two messages and refuses more (the broker nacks the publish)
        broker.queues_pending.discard(name)
        arguments = broker._build_queue_arguments(name)
        arguments.update({"x-max-length": 2, "x-overflow": "reject-publish"})
        broker.channel.queue_declare(name, durable=True, arguments=arguments)
        # When a chunk of five goes to it
        results = ChunkedAmqpPublish(broker)([actor.message(n) for n in range(5)])
        # Then the two it took are confirmed; the three it nacked went through enqueue, which
        # raised what it raises for a nack (a broker connection error: the drainer backs off
        # instead of spending the entries' attempts), the last two without trying again
        assert results[:2] == [None, None]
        assert all(isinstance(r, dramatiq.errors.BrokerConnectionError) for r in results[2:]), results
        assert ready_count(broker, name) == 2
    finally:
        delete(broker, name)
        broker.close()


@pytest.fixture(scope="module")
def small_messages_url() -> Iterator[str]:
    """A RabbitMQ node of its own that closes the channel over a message larger than 64 KiB."""
    binary = find_rabbitmq_server()
    if binary is None:
        unavailable("no rabbitmq-server: install Debian's rabbitmq-server")
        return
    node = RabbitmqServer(binary, config=f"max_message_size = {MAX_MESSAGE_SIZE}\n").start()
    try:
        yield node.url
    finally:
        node.stop()


def test_with_confirms_a_message_the_broker_refuses_fails_alone_and_spends_its_attempts(
    small_messages_url: str,
) -> None:
    broker = RabbitmqBroker(url=small_messages_url, confirm_delivery=True)
    name = f"mollifier-test-{uuid.uuid4().hex[:10]}"
    try:
        (actor,) = declare(broker, name)
        # Given a chunk of ten whose sixth message is larger than the broker takes
        messages = [actor.message(n) for n in range(10)]
        messages[5] = actor.message("x" * (MAX_MESSAGE_SIZE + 1_000))
        # When it is published
        results = ChunkedAmqpPublish(broker)(messages)
        # Then that message alone fails, with an error that spends its attempts (the broker will
        # never take it) instead of one that stalls the drainer as unavailable
        assert [r is None for r in results] == [True] * 5 + [False] + [True] * 4, results
        assert results[5] is not None and not is_unavailable(results[5])
        # And every other message is in the queue: those after it once (the broker closed the
        # channel over it, so the chunk's rest went through enqueue), those before it at least once
        # (their confirms died with the channel)
        got: list[int] = []
        channel = broker.channel
        eventually(lambda: ready_count(broker, name) >= 9)
        while (delivery := channel.basic_get(name, auto_ack=True))[2] is not None:
            got.append(dramatiq.Message.decode(delivery[2]).args[0])
        assert set(got) == set(range(10)) - {5}
        assert sorted(n for n in got if n > 5) == [6, 7, 8, 9]
    finally:
        delete(broker, name)
        broker.close()
