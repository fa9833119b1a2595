"""Drained messages moved inside Redis onto a RedisBroker on the buffer's server: as the handler
would write them, in order, counted against the budget, and only where nothing else changes."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from dramatiq_mollifier import Mollifier
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.handler import make_drain_handler
from dramatiq_mollifier.drain.pace import DrainPace
from dramatiq_mollifier.drain.redis_move import RedisMove, redis_move_for
from dramatiq_mollifier.embedded import EmbeddedRedis
from dramatiq_mollifier.models import STATE_DRAINED, STATE_FOR_OPTION, STATE_OPTION, BufferEntry
from dramatiq_mollifier.settings import MollifierMode, MollifierSettings
from dramatiq_mollifier.telemetry import Telemetry

from .mollifier_helpers import decisions, eventually, metrics, total

pytestmark = pytest.mark.redis


class Hooked(Middleware):
    """A middleware with an enqueue hook of its own: the move must not skip it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        self.seen.append(message.message_id)


class CountingHandler:
    """The drain handler, counting the entries that went through it instead of the move."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._handler = make_drain_handler(broker)
        self.entries: list[str] = []

    def __call__(self, entry: BufferEntry) -> None:
        self.entries.append(entry.message_id)
        self._handler(entry)


@pytest.fixture
def broker(broker_url: str, key_prefix: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=broker_url, namespace=f"{key_prefix}-dq")
    # Off at the gate (nothing here sends through it); on in the worker, where it frees slots.
    broker.add_middleware(
        Mollifier(MollifierSettings(redis_url=broker_url, key_prefix=key_prefix, enabled=False))
    )
    broker.emit_after("process_boot")
    yield broker
    broker.close()


@pytest.fixture
def shared(broker_url: str, key_prefix: str) -> Iterator[MollifierBuffer]:
    """A buffer on the broker's server and database (in cluster mode too: the move needs one)."""
    client = redis.Redis.from_url(broker_url, socket_timeout=5)
    yield MollifierBuffer(client, key_prefix=key_prefix)
    client.close()


def declare(broker: dramatiq.Broker) -> dramatiq.Actor[Any, Any]:
    @dramatiq.actor(broker=broker, queue_name="drained", max_retries=0)
    def ingest(n: str) -> None:
        pass

    return ingest


def buffered(
    buffer: MollifierBuffer, actor: dramatiq.Actor[Any, Any], *args: str, **options: Any
) -> list[str]:
    """Messages for ``actor`` buffered as the gate buffers them (options as RedisBroker set them)."""
    ids = []
    for arg in args:
        message = actor.message_with_options(args=(arg,), redis_message_id="sent-id", **options)
        buffer.accept(message.message_id, org_id="acme", env_id="prod", payload=message.encode())
        ids.append(message.message_id)
    return ids


def drainer_for(
    buffer: MollifierBuffer,
    broker: RedisBroker,
    handler: CountingHandler,
    key_prefix: str,
    *,
    max_outstanding: int = 100,
) -> tuple[MollifierDrainer, DrainPace, RedisMove | None]:
    pace = DrainPace(buffer.client, key_prefix=key_prefix, max_outstanding=max_outstanding)
    mollifier = next(m for m in broker.middleware if isinstance(m, Mollifier))
    move = redis_move_for(
        broker, DrainProtocol(buffer), pace, mode=MollifierMode.DIVERT, middleware=mollifier
    )
    return MollifierDrainer(buffer, handler, pace=pace, move=move, batch_size=50), pace, move


def in_broker(broker: RedisBroker) -> list[dict[str, Any]]:
    """The messages on the broker's ``drained`` queue, decoded, in queue order."""
    client = broker.client
    ids = client.lrange(f"{broker.namespace}:drained", 0, -1)
    return [json.loads(client.hget(f"{broker.namespace}:drained.msgs", i)) for i in ids]


def test_a_chunk_moves_inside_redis_marked_in_order_and_counted_against_the_budget(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str
) -> None:
    # Given five buffered messages and a drainer on the broker's Redis
    ids = buffered(shared, declare(broker), "a", "b", "c", "d", "e")
    handler = CountingHandler(broker)
    drainer, pace, move = drainer_for(shared, broker, handler, key_prefix)
    assert move is not None and move.active

    # When it drains
    result = drainer.run_once()

    # Then every message is on the broker, moved (the handler saw none), in order, each marked
    # drained for its own id with a redis_message_id of its own, args and options intact
    assert result.drained == 5 and handler.entries == []
    messages = in_broker(broker)
    assert [m["message_id"] for m in messages] == ids
    assert [m["args"] for m in messages] == [["a"], ["b"], ["c"], ["d"], ["e"]]
    for message, stored_id in zip(
        messages, broker.client.lrange(f"{broker.namespace}:drained", 0, -1), strict=True
    ):
        options = message["options"]
        assert options[STATE_OPTION] == STATE_DRAINED and options[STATE_FOR_OPTION] == message["message_id"]
        assert options["redis_message_id"] == stored_id.decode()
        assert dramatiq.Message.decode(json.dumps(message).encode()).options["redis_message_id"] != "sent-id"
    # ... the buffer is empty, and the budget counts the five in the broker, none on their way
    assert shared.depth("acme", "prod") == 0 and shared.get(ids[0]) is None
    outstanding, on_the_way = pace.keys
    assert shared.client.zcard(outstanding) == 5 and shared.client.zcard(on_the_way) == 0


def test_another_drainers_slots_on_their_way_limit_the_move(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str
) -> None:
    # Given five buffered messages, a budget of 4, and another drainer that claimed 3 slots and
    # is about to move its messages
    buffered(shared, declare(broker), "a", "b", "c", "d", "e")
    drainer, _, move = drainer_for(shared, broker, CountingHandler(broker), key_prefix, max_outstanding=4)
    assert move is not None and move.active
    DrainPace(shared.client, key_prefix=key_prefix, max_outstanding=4).claim(3, moves=True)

    # When this drainer drains
    drainer.run_once()

    # Then it moves one: the broker gets no more than the budget once the other's three land
    assert len(in_broker(broker)) == 1 and shared.depth("acme", "prod") == 4


def test_orgs_that_move_less_than_their_claim_pass_the_rest_to_the_next_org_in_the_same_tick(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str
) -> None:
    # Found at scale: each tick moved one org's few messages and ended (see test_drain_pace.py).
    ingest = declare(broker)
    for org in "abcdefghij":
        for n in range(2):
            message = ingest.message_with_options(args=(f"{org}{n}",))
            shared.accept(message.message_id, org_id=org, env_id="prod", payload=message.encode())
    handler = CountingHandler(broker)
    drainer, pace, move = drainer_for(shared, broker, handler, key_prefix, max_outstanding=7)
    assert move is not None and move.active

    result = drainer.run_once()

    assert (result.drained, result.paced) == (7, True) and handler.entries == []
    assert [m["args"][0] for m in in_broker(broker)] == ["a0", "a1", "b0", "b1", "c0", "c1", "d0"]
    assert pace.in_use() == 7


def test_a_real_worker_runs_each_moved_message_once_and_frees_its_slot(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str
) -> None:
    # Given a mollifier in the worker (it frees a drained message's slot as it starts), and
    # twenty moved messages
    done: list[str] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name="drained", max_retries=0)
    def ingest(n: str) -> None:
        with lock:
            done.append(n)

    args = [str(i) for i in range(20)]
    buffered(shared, ingest, *args)
    handler = CountingHandler(broker)
    drainer, pace, _ = drainer_for(shared, broker, handler, key_prefix)
    assert drainer.run_once().drained == 20 and handler.entries == []

    # When a real worker consumes them
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        eventually(lambda: len(done) == 20, timeout_s=15)
        eventually(lambda: shared.client.zcard(pace.keys[0]) == 0, timeout_s=5)
    finally:
        worker.stop()

    # Then each ran once, in order, and every slot came back
    assert done == args


@pytest.mark.parametrize(
    "odd",
    ["options-empty", "braces-in-args", "tail-in-an-option", "dual-write", "unknown-actor", "escaped-id"],
)
def test_what_does_not_move_goes_through_the_handler_and_order_per_env_is_kept(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str, odd: str
) -> None:
    # Given movable messages around one odd entry
    actor = declare(broker)
    before = buffered(shared, actor, "1", "2")
    message: dramatiq.Message[Any]
    if odd == "options-empty":  # moves: the marker is the options' only content
        message = dramatiq.Message(
            queue_name="drained", actor_name="ingest", args=("odd",), kwargs={}, options={}
        )
    elif odd == "braces-in-args":  # moves: the JSON's anchors are at its start and its end
        message = actor.message_with_options(args=('{"queue_name":"x","actor_name":"y","args":[}',))
    elif odd == "tail-in-an-option":  # moves: the options' own end is found from the end
        message = actor.message_with_options(args=("odd",), note='},"message_id":"x","message_timestamp":1}')
    elif odd == "escaped-id":  # the script splices only [A-Za-z0-9-] ids into JSON: the pop takes it
        message = actor.message_with_options(args=("odd",)).copy(message_id="odd:id/1")
    else:
        message = actor.message_with_options(args=("odd",))
        if odd == "unknown-actor":  # the worker does not declare it: the handler decides
            message = message.copy(actor_name="undeclared")
    payload = message.encode()
    if odd == "dual-write":
        MollifierBuffer(shared.client, key_prefix=key_prefix, mode="dual_write").accept(
            message.message_id, org_id="acme", env_id="prod", payload=payload
        )
    else:
        shared.accept(message.message_id, org_id="acme", env_id="prod", payload=payload)
    after = buffered(shared, actor, "3", "4")
    handler = CountingHandler(broker)
    drainer, _, _ = drainer_for(shared, broker, handler, key_prefix)

    # When it drains until the buffer is empty
    for _ in range(5):
        drainer.run_once()
        if shared.depth("acme", "prod") == 0:
            break
    assert shared.depth("acme", "prod") == 0 or odd == "unknown-actor"

    # Then the broker has the messages in their order; the odd one moved, or went through the
    # handler (which then also took the rest of that visit)
    moved_odd = odd in ("options-empty", "braces-in-args", "tail-in-an-option")
    written = [m["message_id"] for m in in_broker(broker)]
    if odd == "dual-write":  # an audited copy: the broker had it already
        assert written == before + after and message.message_id in handler.entries
    elif odd == "unknown-actor":  # held for the grace period (as without the move); the rest go on
        assert written == before + after and handler.entries[0] == message.message_id
    else:
        assert written == [*before, message.message_id, *after]
        assert (handler.entries == []) is moved_odd
        odd_options = next(m for m in in_broker(broker) if m["message_id"] == message.message_id)["options"]
        assert odd_options[STATE_OPTION] == STATE_DRAINED
        decoded = dramatiq.Message.decode(
            json.dumps(next(m for m in in_broker(broker) if m["message_id"] == message.message_id)).encode()
        )
        assert decoded.args == message.args
        if odd == "tail-in-an-option":
            assert decoded.options["note"] == message.options["note"]


def test_a_foreign_enqueue_hook_or_the_debug_audit_turns_the_move_off(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a drainer that moves
    actor = declare(broker)
    handler = CountingHandler(broker)
    drainer, _, move = drainer_for(shared, broker, handler, key_prefix)
    assert move is not None and move.active

    # When the DEBUG audit of divert entries is on, the move stops (the audit needs each payload)
    with caplog.at_level(logging.DEBUG, logger="dramatiq_mollifier.drain.acks"):
        assert not move.active
        first = buffered(shared, actor, "audited")
        drainer.run_once()
        assert handler.entries == first
    assert move.active

    # When a middleware with an enqueue hook is added late, the handler runs it again
    hooked = Hooked()
    broker.add_middleware(hooked)
    assert not move.active
    second = buffered(shared, actor, "hooked")
    drainer.run_once()
    assert handler.entries == first + second and hooked.seen == second


def test_no_move_unless_the_broker_is_a_redis_broker_on_the_buffers_database(
    shared: MollifierBuffer, broker: RedisBroker, disposable_redis: EmbeddedRedis, key_prefix: str
) -> None:
    mollifier = object()
    pace = DrainPace(shared.client, key_prefix=key_prefix)
    # A RedisBroker on the buffer's database: the move
    assert redis_move_for(
        broker, DrainProtocol(shared), pace, mode=MollifierMode.DIVERT, middleware=mollifier
    )
    # No pace (dual_write drains audit only), another broker, another server: none
    assert (
        redis_move_for(broker, DrainProtocol(shared), None, mode=MollifierMode.DIVERT, middleware=mollifier)
        is None
    )
    stub = StubBroker()
    assert (
        redis_move_for(stub, DrainProtocol(shared), pace, mode=MollifierMode.DIVERT, middleware=mollifier)
        is None
    )
    elsewhere = RedisBroker(url=disposable_redis.url)
    try:
        assert (
            redis_move_for(
                elsewhere, DrainProtocol(shared), pace, mode=MollifierMode.DIVERT, middleware=mollifier
            )
            is None
        )
    finally:
        elsewhere.close()


@pytest.mark.parametrize("gate_on", [True, False], ids=["gate-on", "gate-off"])
def test_moved_messages_count_as_drained_and_as_the_gates_bypass_only_when_the_gate_is_on(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str, gate_on: bool
) -> None:
    # Given three buffered messages and a drainer whose telemetry a reader sees; the gate counts
    # a decision for every enqueue while it is on (a drained one as bypass_drained), none while off
    ids = buffered(shared, declare(broker), "a", "b", "c")
    provider, reader = metrics()
    pace = DrainPace(shared.client, key_prefix=key_prefix)
    move = redis_move_for(
        broker,
        DrainProtocol(shared),
        pace,
        mode=MollifierMode.DIVERT,
        middleware=next(m for m in broker.middleware if isinstance(m, Mollifier)),
        gate_counts=gate_on,
    )
    drainer = MollifierDrainer(
        shared, CountingHandler(broker), pace=pace, move=move, telemetry=Telemetry(provider)
    )

    # When it moves them
    assert move is not None and move.active
    assert drainer.run_once().drained == len(ids)

    # Then they count as drained, and as the gate's decisions only while the gate is on
    assert total(reader, "mollifier.drained") == 3
    assert decisions(reader)[("pass_through", "bypass_drained", False)] == (3 if gate_on else 0)
