"""The middleware's drain handler: back onto the broker as it was, or dead-lettered at once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.drain.drainer import DrainResult, MollifierDrainer
from dramatiq_mollifier.drain.handler import make_drain_handler
from dramatiq_mollifier.errors import UndeliverableEntryError
from dramatiq_mollifier.models import STATE_DRAINED, STATE_FOR_OPTION, STATE_OPTION, BufferEntry, EntryStatus
from dramatiq_mollifier.settings import MollifierMode


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def entry_of(message: dramatiq.Message[Any] | None = None, payload: bytes | None = None) -> BufferEntry:
    return BufferEntry(
        message_id=message.message_id if message else "m1",
        org_id="acme",
        env_id="prod",
        payload=payload if payload is not None else message.encode() if message else b"",
        status=EntryStatus.DRAINING,
        attempts=0,
        created_at=datetime.now(timezone.utc),
    )


def declare(broker: dramatiq.Broker, name: str = "ingest", queue_name: str = "default") -> None:
    def ingest(*args: Any, **kwargs: Any) -> None:
        pass

    dramatiq.actor(ingest, actor_name=name, queue_name=queue_name, broker=broker)


def a_message(actor_name: str = "ingest", queue_name: str = "default") -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue_name,
        actor_name=actor_name,
        args=(1, "two", {"three": [3]}),
        kwargs={"flag": True},
        options={"org_id": "acme", "env_id": "prod", "max_retries": 7},
    )


def test_divert_mode_enqueues_the_stored_message_with_the_drained_marker(broker: StubBroker) -> None:
    declare(broker, queue_name="ingest-queue")
    message = a_message(queue_name="ingest-queue")

    make_drain_handler(broker)(entry_of(message))

    (raw,) = list(broker.queues["ingest-queue"].queue)
    sent = dramatiq.Message.decode(raw)
    assert sent.message_id == message.message_id
    assert sent.message_timestamp == message.message_timestamp
    assert (sent.queue_name, sent.actor_name) == ("ingest-queue", "ingest")
    assert sent.args == message.args
    assert sent.kwargs == message.kwargs
    assert sent.options == {
        **message.options,
        STATE_OPTION: STATE_DRAINED,
        STATE_FOR_OPTION: message.message_id,
    }
    assert "eta" not in sent.options
    assert broker.queues[dq_name("ingest-queue")].qsize() == 0


def test_a_payload_that_does_not_decode_is_undeliverable(broker: StubBroker) -> None:
    declare(broker)

    with pytest.raises(UndeliverableEntryError, match="not a decodable Dramatiq message"):
        make_drain_handler(broker)(entry_of(payload=b"\xff\x00 not json"))


def test_json_that_is_not_a_message_is_undeliverable(broker: StubBroker) -> None:
    declare(broker)

    with pytest.raises(UndeliverableEntryError):
        make_drain_handler(broker)(entry_of(payload=b'{"hello": "world"}'))


def test_a_message_for_an_unknown_actor_is_undeliverable(broker: StubBroker) -> None:
    declare(broker)

    with pytest.raises(UndeliverableEntryError, match="actor 'renamed'"):
        make_drain_handler(broker)(entry_of(a_message(actor_name="renamed")))


def test_a_message_for_an_unknown_queue_is_undeliverable(broker: StubBroker) -> None:
    declare(broker)

    with pytest.raises(UndeliverableEntryError, match="queue 'gone'"):
        make_drain_handler(broker)(entry_of(a_message(queue_name="gone")))


def test_dual_write_mode_only_audits(broker: StubBroker) -> None:
    declare(broker)
    handler = make_drain_handler(broker, mode=MollifierMode.DUAL_WRITE)

    handler(entry_of(a_message()))

    assert broker.queues["default"].qsize() == 0
    with pytest.raises(UndeliverableEntryError):
        handler(entry_of(payload=b"garbled"))


def test_the_drainer_dead_letters_an_undecodable_entry_on_its_first_attempt(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    declare(broker)
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    buffer.accept("bad", org_id="acme", env_id="prod", payload=b"\x80garbage")
    good = a_message()
    buffer.accept(good.message_id, org_id="acme", env_id="prod", payload=good.encode())
    drainer = MollifierDrainer(buffer, make_drain_handler(broker), max_attempts=5)

    assert drainer.run_once() == DrainResult(drained=1, failed=1)

    (dead,) = buffer.failed()
    assert dead.message_id == "bad"
    assert dead.attempts == 0
    assert dead.last_error is not None
    assert dead.last_error[0] == "UndeliverableEntryError"
    assert broker.queues["default"].qsize() == 1


def test_a_diverted_message_drains_through_the_gate_without_being_diverted_again(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Every send trips (threshold 0), so a drained copy that went through the gate again would
    # land back in the buffer.
    settings = MollifierSettings(enabled=True, enabled_orgs={"*"}, trip_threshold=0, key_prefix=key_prefix)
    mollifier = Mollifier(settings, client=redis_client)
    broker = StubBroker()
    broker.add_middleware(mollifier)
    try:

        @dramatiq.actor(broker=broker, max_retries=0)
        def ingest(n: int) -> None:
            pass

        sent = [ingest.send_with_options(args=(n,), org_id="acme", env_id="prod") for n in range(20)]
        assert broker.queues["default"].qsize() == 0
        assert mollifier.buffer.depth() == 20

        drainer = MollifierDrainer(mollifier.buffer, make_drain_handler(broker))
        assert drainer.run_once() == DrainResult(drained=20, failed=0)

        assert mollifier.buffer.depth() == 0
        queued = [dramatiq.Message.decode(raw) for raw in broker.queues["default"].queue]
        assert sorted(m.message_id for m in queued) == sorted(m.message_id for m in sent)
        assert all(m.options[STATE_OPTION] == STATE_DRAINED for m in queued)
    finally:
        broker.close()
