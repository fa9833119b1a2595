"""Whose fault a failure is: a broker outage or a rolling deploy dead-letters nothing.

The buffer is on the session's Redis; the broker's Redis is a server of the test's own, which it
stops and starts again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.actor_registry import ActorRegistry
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.failures import is_unavailable
from dramatiq_mollifier.drain.handler import make_drain_handler
from dramatiq_mollifier.drain.hooks import DrainHooks
from dramatiq_mollifier.drain.settling import Settler
from dramatiq_mollifier.embedded import EmbeddedRedis
from dramatiq_mollifier.models import BufferEntry, EntryStatus
from dramatiq_mollifier.telemetry import Telemetry

from .mollifier_helpers import eventually

BACKLOG = 400


def seed(buffer: MollifierBuffer, count: int, actor_name: str = "record") -> set[str]:
    ids = set()
    for n in range(count):
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name="default", actor_name=actor_name, args=(n,), kwargs={}, options={}
        )
        buffer.accept(message.message_id, org_id=f"org{n % 4}", env_id="prod", payload=message.encode())
        ids.add(message.message_id)
    return ids


def declare(broker: dramatiq.Broker, actor_name: str = "record") -> None:
    def record(n: int) -> None:
        pass

    dramatiq.actor(record, broker=broker, actor_name=actor_name)


@pytest.fixture
def stub_brokers() -> Iterator[list[StubBroker]]:
    made: list[StubBroker] = []
    yield made
    for broker in made:
        broker.close()


def test_broker_connection_errors_are_unavailability_and_others_are_the_messages() -> None:
    assert is_unavailable(ConnectionRefusedError())
    assert is_unavailable(TimeoutError())
    assert is_unavailable(redis.ConnectionError("down"))
    assert is_unavailable(redis.ResponseError("READONLY You can't write against a read only replica."))
    assert is_unavailable(dramatiq.errors.ConnectionClosed(OSError("gone")))
    wrapped = RuntimeError("enqueue failed")
    wrapped.__cause__ = PermissionError("denied")
    assert not is_unavailable(wrapped)  # OSError alone is not a connection error
    wrapped.__cause__ = ConnectionResetError()
    assert is_unavailable(wrapped)
    assert not is_unavailable(ValueError("bad payload"))


def test_a_message_rabbitmq_closes_the_channel_over_is_the_messages_fault() -> None:
    from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker, NackError

    # What RabbitmqBroker.enqueue raises, after its attempts, for a message over max_message_size
    refused = ChannelClosedByBroker(406, "PRECONDITION_FAILED - message size 70000 is larger than 65536")
    try:
        raise dramatiq.errors.ConnectionClosed(refused) from None
    except dramatiq.errors.ConnectionClosed as exc:
        enqueue_error = exc
    # Trying it again can never work: it spends its attempts instead of stalling the drainer
    assert not is_unavailable(enqueue_error)
    assert not is_unavailable(refused)
    # A lost connection, a nack or another channel close still says the broker is unwell
    assert is_unavailable(dramatiq.errors.ConnectionClosed(AMQPConnectionError("reset")))
    assert is_unavailable(dramatiq.errors.ConnectionClosed(NackError([])))
    assert is_unavailable(dramatiq.errors.ConnectionClosed(ChannelClosedByBroker(404, "NOT_FOUND")))
    # And so does a queue declared elsewhere with other arguments: every message of it would fail
    mismatch = ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue")
    assert is_unavailable(dramatiq.errors.ConnectionClosed(mismatch))


def test_a_broker_outage_under_a_backlog_dead_letters_nothing_and_consumes_no_attempt(
    buffer: MollifierBuffer, disposable_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # DEBUG: a divert entry's mollifier.drained audit line, counted below, is DEBUG.
    caplog.set_level(logging.DEBUG, logger="dramatiq_mollifier")
    broker = RedisBroker(url=disposable_redis.url)
    declare(broker)
    ids = seed(buffer, BACKLOG)
    redeliver = make_drain_handler(broker)
    handled = 0
    midway, down = threading.Event(), threading.Event()

    def handler(entry: BufferEntry) -> None:
        nonlocal handled
        handled += 1
        if handled == 50:
            midway.set()
            down.wait(10)
        redeliver(entry)

    drainer = MollifierDrainer(buffer, handler, concurrency=2, batch_size=10, poll_interval_ms=20)
    drainer.start()
    try:
        # Given a drain under way, when the broker's Redis goes away for 2 s (saving its data)
        assert midway.wait(10)
        redis.Redis.from_url(disposable_redis.url).shutdown(save=True)
        disposable_redis.stop()
        down.set()
        time.sleep(2)  # the outage itself: the drainer meets a broker that stays down a while
        disposable_redis.start()

        # Then everything is delivered once it is back
        admin = redis.Redis.from_url(disposable_redis.url)
        eventually(lambda: buffer.depth() == 0, timeout_s=30, what="the backlog to drain")
    finally:
        assert drainer.stop(5_000)
    # RedisBroker keys each enqueue by a fresh redis_message_id: a copy enqueued twice shows.
    delivered = [dramatiq.Message.decode(raw).message_id for raw in admin.hvals("dramatiq:default.msgs")]
    admin.close()
    broker.close()
    # Everything once, except what was in flight when the server went (its reply lost, the
    # enqueue may have landed): at most one per handler thread.
    assert set(delivered) == ids
    assert len(delivered) - len(ids) <= 2
    assert buffer.failed() == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("mollifier.broker_unavailable" in m for m in messages)
    assert not any("mollifier.drain_retry" in m or "mollifier.drain_failed" in m for m in messages)
    drained = [m for m in messages if m.startswith("mollifier.drained ")]
    assert len(drained) == BACKLOG, (len(delivered), len(drained))
    assert all(" attempts=0 " in m for m in drained)


def test_a_broker_outage_gives_a_popped_batch_back_in_the_order_it_was_popped(
    buffer: MollifierBuffer, disposable_redis: EmbeddedRedis
) -> None:
    # Given 20 messages of one env in the buffer, and the broker's Redis down
    broker = RedisBroker(url=disposable_redis.url)
    declare(broker)
    for n in range(20):
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name="default", actor_name="record", args=(n,), kwargs={}, options={}
        )
        buffer.accept(message.message_id, org_id="acme", env_id="prod", payload=message.encode())
    disposable_redis.stop()

    # When a tick pops a batch of 10 and its pipelined broker write fails, giving it back
    # untried (a pool of 16 handlers writes the batch as one chunk)
    failing = MollifierDrainer(buffer, make_drain_handler(broker), concurrency=16, batch_size=10)
    failing.run_once()
    broker.close()
    assert buffer.depth() == 20

    # Then the batch is back at the head of the queue in its order: a drainer delivers 0..19
    # (given back one at a time, each before the last, it was 9..0, then 10..19)
    delivered: list[int] = []
    recorder = MollifierDrainer(
        buffer, lambda entry: delivered.append(dramatiq.Message.decode(entry.payload).args[0]), concurrency=1
    )
    while buffer.depth():
        recorder.run_once()
    assert delivered == list(range(20))


@pytest.fixture(params=[None, 16], ids=["layout-default", "slot-groups-16"])
def deploy_buffer(
    request: pytest.FixtureRequest, redis_client: redis.Redis, key_prefix: str
) -> MollifierBuffer:
    """The session's default layout, and 16 slot groups (a cluster's default) on any server."""
    return MollifierBuffer(redis_client, key_prefix=key_prefix, slot_groups=request.param)


def test_a_deploy_where_only_new_workers_know_an_actor_dead_letters_nothing(
    deploy_buffer: MollifierBuffer, stub_brokers: list[StubBroker], caplog: pytest.LogCaptureFixture
) -> None:
    buffer = deploy_buffer
    # Given messages for an actor only the new version declares, and an old worker draining
    old_broker, new_broker = StubBroker(), StubBroker()
    stub_brokers += [old_broker, new_broker]
    declare(old_broker, "record")
    declare(new_broker, "new_feature")
    ids = seed(buffer, 20, actor_name="new_feature")
    old = MollifierDrainer(buffer, make_drain_handler(old_broker), poll_interval_ms=10, retry_delay_ms=50)
    new = MollifierDrainer(buffer, make_drain_handler(new_broker), poll_interval_ms=10)
    old.start()
    try:
        eventually(lambda: "mollifier.unknown_actor" in caplog.text, what="the old worker to meet the actor")
        # When the new version's worker comes up
        new.start()
        # (With slot groups the old worker's delays leave the group with every entry in flight:
        # the new drainer reads it on every tick all the same, so it wins its share as they fall
        # due; when it looked again only once a second this took about 25 s.)
        eventually(lambda: buffer.depth() == 0, what="the new worker to drain")
    finally:
        assert old.stop(5_000)
        assert new.stop(5_000)

    # Then nothing was dead-lettered, and the old worker said so once
    assert buffer.failed() == []
    assert {dramatiq.Message.decode(raw).message_id for raw in new_broker.queues["default"].queue} == ids
    assert caplog.text.count("mollifier.unknown_actor") == 1


def test_an_unknown_actor_is_dead_lettered_once_its_grace_is_over(buffer: MollifierBuffer) -> None:
    broker = StubBroker()
    declare(broker, "record")
    seed(buffer, 3, actor_name="never_declared")
    drainer = MollifierDrainer(
        buffer, make_drain_handler(broker), poll_interval_ms=10, retry_delay_ms=20, unknown_actor_grace_ms=200
    )
    started = time.monotonic()
    drainer.start()
    try:
        eventually(lambda: len(buffer.failed()) == 3, what="the entries to be dead-lettered")
    finally:
        assert drainer.stop(5_000)
        broker.close()
    assert time.monotonic() - started >= 0.2
    assert {entry.last_error[0] for entry in buffer.failed() if entry.last_error} == {
        "UnknownDestinationError"
    }


def test_a_last_failure_whose_text_redis_cannot_encode_is_dead_lettered_with_it(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given an entry on its last attempt
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    entry = protocol.pop("acme", "prod")
    assert entry is not None
    settler = Settler(protocol, telemetry=Telemetry(), max_attempts=1, is_retryable=lambda e: True)

    # When its handler fails with a text holding a lone surrogate (bytes decoded with
    # surrogateescape: a path, an environment value)
    settler.settle([(entry, ValueError(b"bad \xff path".decode("utf-8", "surrogateescape")))])

    # Then it is dead-lettered with that error, escaped (it stayed DRAINING, then went back
    # and failed again every lease, and ended as LeaseExpired)
    stored = buffer.get("m1")
    assert stored is not None and stored.status is EntryStatus.FAILED
    assert stored.last_error == ("ValueError", "bad \\udcff path")


def test_fleets_split_by_module_give_each_other_their_messages_back_untried(buffer: MollifierBuffer) -> None:
    # Given two worker fleets on one buffer that import different actor modules (billing,
    # search), past the grace for an actor the billing drainer does not declare
    billing, search = StubBroker(), StubBroker()
    for broker, name in ((billing, "charge"), (search, "index")):
        dramatiq.actor(lambda n: None, broker=broker, actor_name=name, queue_name="default")
    drainers = []
    for broker in (billing, search):
        registry = ActorRegistry(buffer.client, buffer.keys.drain_actors, broker.get_declared_actors)
        registry.announce()
        hooks = DrainHooks(report_gauges=registry.announce, declared_elsewhere=registry.declares)
        drainers.append(
            MollifierDrainer(
                buffer,
                make_drain_handler(broker),
                poll_interval_ms=10,
                retry_delay_ms=20,
                unknown_actor_grace_ms=0,
                hooks=hooks,
            )
        )
    sent = seed(buffer, 200, actor_name="index")
    for drainer in drainers:
        drainer.start()
    try:
        # When both drain
        eventually(lambda: buffer.depth() == 0, timeout_s=30, what="the buffer drained")
    finally:
        for drainer in drainers:
            assert drainer.stop(5_000)
        billing.close()

    # Then the search fleet delivered every one (the billing drainer dead-lettered those it popped)
    assert buffer.failed() == []
    delivered = {dramatiq.Message.decode(raw).message_id for raw in search.queues["default"].queue}
    search.close()
    assert delivered == sent


def test_an_actor_no_live_drainer_declares_is_still_dead_lettered_after_the_grace(
    buffer: MollifierBuffer,
) -> None:
    # Given a drainer whose registry knows no other fleet (another app on this prefix)
    broker = StubBroker()
    dramatiq.actor(lambda n: None, broker=broker, actor_name="charge", queue_name="default")
    registry = ActorRegistry(buffer.client, buffer.keys.drain_actors, broker.get_declared_actors)
    registry.announce()
    drainer = MollifierDrainer(
        buffer,
        make_drain_handler(broker),
        unknown_actor_grace_ms=0,
        hooks=DrainHooks(declared_elsewhere=registry.declares),
    )
    seed(buffer, 3, actor_name="index")
    try:
        drainer.run_once()
    finally:
        drainer.stop(5_000)
        broker.close()
    # Then its entries are dead-lettered as before
    assert len(buffer.failed()) == 3
