"""What the gate writes and returns, on a real Redis: markers bound to one enqueue, re-sent ids,
the message a diverted send() returns, and clients or settings that would lose messages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name

from dramatiq_mollifier import Mollifier, MollifierConfigurationError, MollifierSettings
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.handler import make_drain_handler
from dramatiq_mollifier.models import EntryStatus

from .mollifier_helpers import THRESHOLD, add_mollifier, decisions


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def on_broker(broker: StubBroker, queue_name: str = "default") -> list[dramatiq.Message[Any]]:
    return [dramatiq.Message.decode(data) for data in list(broker.queues[queue_name].queue)]


def test_a_fan_out_of_copies_of_a_gated_message_is_gated_like_any_other(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given 9 messages sent below the threshold, and a delayed one
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix)

    @dramatiq.actor(broker=broker)
    def ingest(n: int) -> None: ...

    sent = [ingest.send_with_options(args=(n,), org_id="acme") for n in range(9)]
    delayed = ingest.send_with_options(args=(9,), org_id="acme", delay=60_000)

    # When a fan-out re-sends copies of them under new ids
    for n in range(1_000):
        source = delayed if n % 10 == 0 else sent[n % 9]
        broker.enqueue(source.copy(message_id=f"fan-out-{n}", args=(n,)))

    # Then the copies were counted like fresh sends: the threshold on the broker (copies of the
    # delayed message keep its delay queue), the rest buffered
    assert len(on_broker(broker)) + len(on_broker(broker, dq_name("default"))) - 1 == THRESHOLD
    assert mollifier.buffer.depth("acme") == 9 + 1_000 - THRESHOLD
    assert decisions(reader)[("pass_through", "bypass_admitted", False)] == 0


def test_a_copy_of_a_drained_message_under_a_new_id_is_gated(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a tripped env and a message the drainer put back on the broker
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0)

    @dramatiq.actor(broker=broker)
    def ingest(n: int) -> None: ...

    original = ingest.send_with_options(args=(1,), org_id="acme")
    entry = DrainProtocol(mollifier.buffer).pop("acme", "default")
    assert entry is not None
    make_drain_handler(broker)(entry)
    DrainProtocol(mollifier.buffer).ack(entry.message_id)
    (drained,) = on_broker(broker)
    assert drained.message_id == original.message_id

    # When the actor fans it out (a copy under a new id) while the env is still tripped
    broker.enqueue(drained.copy(message_id="child"))

    # Then the copy was diverted, not let through as drained
    assert len(on_broker(broker)) == 1
    assert mollifier.buffer.get("child") is not None
    counted = decisions(reader)
    assert counted[("pass_through", "bypass_drained", False)] == 1
    assert counted[("mollify", "per_env_rate", True)] == 2


@pytest.mark.parametrize("status", [EntryStatus.QUEUED, EntryStatus.FAILED])
def test_a_re_send_whose_id_is_buffered_or_dead_lettered_goes_to_the_broker(
    status: EntryStatus, broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a diverted message, still queued or dead-lettered by the drainer
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0)

    @dramatiq.actor(broker=broker)
    def ingest(n: int) -> None: ...

    sent = ingest.send_with_options(args=(1,), org_id="acme")
    if status is EntryStatus.FAILED:
        protocol = DrainProtocol(mollifier.buffer)
        assert protocol.pop("acme", "default") is not None
        assert protocol.fail(sent.message_id, code="Boom", message="gave up")
    assert mollifier.buffer.get(sent.message_id).status is status  # type: ignore[union-attr]

    # When the same message id is sent again
    again = ingest.message_with_options(args=(2,), org_id="acme").copy(message_id=sent.message_id)
    returned = broker.enqueue(again)

    # Then it is not swallowed: the broker has it, and the decision says why
    assert [m.args for m in on_broker(broker)] == [(2,)]
    assert "mollified" not in returned.options
    assert decisions(reader)[("pass_through", "duplicate_id", True)] == 1
    assert mollifier.buffer.get(sent.message_id).status is status  # type: ignore[union-attr]


def test_a_diverted_send_returns_a_message_that_says_so_and_logs_the_setting_to_raise(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    mollifier, _ = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0)

    @dramatiq.actor(broker=broker)
    def ingest(n: int) -> None: ...

    message = ingest.message_with_options(args=(1,), org_id="acme")
    returned = broker.enqueue(message)

    assert returned.options == {"org_id": "acme", "mollified": True, "mollifier_reason": "per_env_rate"}
    assert message.options == {"org_id": "acme"}  # the caller's message is left alone
    stored = dramatiq.Message.decode(mollifier.buffer.get(message.message_id).payload)  # type: ignore[union-attr]
    assert stored.options == {"org_id": "acme"}  # the actor will not see the flag
    assert "MOLLIFIER_TRIP_THRESHOLD" in caplog.text


def test_a_client_that_decodes_responses_is_refused_at_construction(redis_url: str) -> None:
    client = client_from_url(redis_url, decode_responses=True)

    with pytest.raises(MollifierConfigurationError, match="decode_responses=False"):
        Mollifier(MollifierSettings(enabled=True), client=client)
    client.close()
