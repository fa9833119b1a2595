"""Drained messages reach a RedisBroker in one pipelined round trip per chunk, as enqueue would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, MiddlewareError

from dramatiq_mollifier.drain.batch_enqueue import PipelinedRedisEnqueue, pipelined_enqueue_for
from dramatiq_mollifier.drain.handler import make_drain_handler
from dramatiq_mollifier.drain.handler_pool import MANY_CHUNK_MIN, HandlerPool
from dramatiq_mollifier.models import STATE_DRAINED, STATE_OPTION, BufferEntry, EntryStatus

pytestmark = pytest.mark.redis


class Refused(MiddlewareError):
    """What a middleware raises to keep a message from the broker (Dramatiq re-raises these)."""


class Seen(Middleware):
    """Records the enqueue hooks; refuses messages whose first argument is "refused"."""

    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[str] = []

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        if message.args and message.args[0] == "refused":
            raise Refused("refused by a middleware")
        self.before.append(message.message_id)

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        self.after.append(message.message_id)


@pytest.fixture
def broker(broker_url: str, key_prefix: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=broker_url, namespace=f"{key_prefix}-dq")
    broker.add_middleware(Seen())
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def seen(broker: dramatiq.Broker) -> Seen:
    return next(m for m in broker.middleware if isinstance(m, Seen))


def entry_for(message: dramatiq.Message[Any]) -> BufferEntry:
    return BufferEntry(
        message_id=message.message_id,
        org_id="acme",
        env_id="prod",
        payload=message.encode(),
        status=EntryStatus.DRAINING,
        attempts=0,
        created_at=datetime.now(timezone.utc),
    )


def test_a_chunk_goes_out_in_one_round_trip_and_a_real_worker_runs_every_message(
    broker: RedisBroker,
) -> None:
    done: list[tuple[str, str]] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name="drained", max_retries=0)
    def ingest(n: str) -> None:
        with lock:
            done.append((n, ingest.broker.get_actor("ingest").actor_name))

    messages = [ingest.message(str(n)) for n in range(25)]
    handler = make_drain_handler(broker)
    writes: list[int] = []
    original = broker.client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original(*args, **kwargs)
        execute = pipe.execute

        def counted(*a: Any, **k: Any) -> Any:
            writes.append(len(pipe.command_stack))
            return execute(*a, **k)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    broker.client.pipeline = pipeline  # type: ignore[method-assign]
    results = handler.many([entry_for(m) for m in messages])
    broker.client.pipeline = original  # type: ignore[method-assign]

    assert results == [None] * 25
    assert writes == [1], "the chunk's 25 messages went out in one script call"
    heartbeat = broker.client.zscore(f"{broker.namespace}:__heartbeats__", broker.broker_id)
    assert heartbeat is not None, "the enqueuing broker's heartbeat, as dispatch.lua registers it"
    assert seen(broker).before == [m.message_id for m in messages]
    assert seen(broker).after == [m.message_id for m in messages]

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while len(done) < 25 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert sorted(n for n, _ in done) == sorted(str(n) for n in range(25))
    assert broker.client.llen(f"{broker.namespace}:drained") == 0


def test_drained_copies_keep_their_identity_and_carry_the_marker(broker: RedisBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name="drained")
    def ingest(n: int) -> None:
        pass

    messages = [ingest.message_with_options(args=(n,), org_id="acme") for n in range(3)]
    assert make_drain_handler(broker).many([entry_for(m) for m in messages]) == [None] * 3

    raw = broker.client.hvals(f"{broker.namespace}:drained.msgs")
    queued = sorted((dramatiq.Message.decode(r) for r in raw), key=lambda m: m.args[0])
    assert [m.message_id for m in queued] == [m.message_id for m in messages]
    assert all(m.options[STATE_OPTION] == STATE_DRAINED for m in queued)
    assert all(m.options["org_id"] == "acme" for m in queued)
    assert len({m.options["redis_message_id"] for m in queued}) == 3


def test_a_chunk_for_two_queues_is_one_call_per_queue_each_in_its_order(broker: RedisBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name="drained")
    def ingest(n: int) -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name="other")
    def report(n: int) -> None:
        pass

    broker.client.config_resetstat()
    messages = [(ingest if n % 3 else report).message(n) for n in range(12)]
    assert make_drain_handler(broker).many([entry_for(m) for m in messages]) == [None] * 12

    calls = broker.client.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert calls == 2, "one script call per queue, not one per message"
    for queue, sent in (
        ("drained", [m for m in messages if m.queue_name == "drained"]),
        ("other", [m for m in messages if m.queue_name == "other"]),
    ):
        ids = broker.client.lrange(f"{broker.namespace}:{queue}", 0, -1)
        stored = broker.client.hmget(f"{broker.namespace}:{queue}.msgs", ids)
        assert [dramatiq.Message.decode(raw).message_id for raw in stored] == [m.message_id for m in sent]


def test_a_message_a_middleware_refuses_fails_alone(broker: RedisBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name="drained")
    def ingest(n: str) -> None:
        pass

    messages = [ingest.message("a"), ingest.message("refused"), ingest.message("c")]
    results = make_drain_handler(broker).many([entry_for(m) for m in messages])

    assert results[0] is None and results[2] is None
    assert isinstance(results[1], Refused)
    assert broker.client.llen(f"{broker.namespace}:drained") == 2


def test_an_unreachable_broker_fails_every_message_of_the_chunk(
    disposable_redis: Any, key_prefix: str
) -> None:
    broker = RedisBroker(url=disposable_redis.url, namespace=f"{key_prefix}-dq")
    try:

        @dramatiq.actor(broker=broker, queue_name="drained")
        def ingest(n: int) -> None:
            pass

        handler = make_drain_handler(broker)
        messages = [ingest.message(n) for n in range(3)]
        disposable_redis.stop()
        results = handler.many([entry_for(m) for m in messages])
        assert all(isinstance(r, redis.ConnectionError) for r in results)
    finally:
        broker.close()


def test_a_server_that_forgot_the_script_still_gets_the_messages(broker: RedisBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name="drained")
    def ingest(n: int) -> None:
        pass

    broker.client.script_flush()
    results = make_drain_handler(broker).many([entry_for(ingest.message(n)) for n in range(4)])

    assert results == [None] * 4
    assert broker.client.llen(f"{broker.namespace}:drained") == 4


def test_other_brokers_enqueue_message_by_message(broker: RedisBroker) -> None:
    stub = StubBroker()
    try:
        assert pipelined_enqueue_for(stub) is None
    finally:
        stub.close()
    assert isinstance(pipelined_enqueue_for(broker), PipelinedRedisEnqueue)


def test_the_pool_hands_a_chunk_to_the_handlers_many(broker: RedisBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name="drained")
    def ingest(n: int) -> None:
        pass

    handler = make_drain_handler(broker)
    chunks: list[int] = []
    many = handler.many

    def counting(entries: Any) -> list[BaseException | None]:
        chunks.append(len(entries))
        return many(entries)

    handler.many = counting  # type: ignore[method-assign]
    pool = HandlerPool(1, handler, lambda completion: None)
    pool.submit([entry_for(ingest.message(n)) for n in range(10)])
    done = pool.take(10)
    pool.close()

    assert [error for _, error in done] == [None] * 10
    assert chunks == [10]
    assert broker.client.llen(f"{broker.namespace}:drained") == 10


def test_a_batch_handler_gets_chunks_of_at_least_32_however_parallel_the_pool(broker: RedisBroker) -> None:
    """Handlers that wait on the broker make the parallelism grow; a batch handler's pop still
    goes out in chunks of at least MANY_CHUNK_MIN, not one round trip per entry or two."""

    @dramatiq.actor(broker=broker, queue_name="drained")
    def ingest(n: int) -> None:
        pass

    handler = make_drain_handler(broker)
    chunks: list[int] = []
    lock = threading.Lock()
    many = handler.many

    def counting(entries: Any) -> list[BaseException | None]:
        with lock:
            chunks.append(len(entries))
        return many(entries)

    handler.many = counting  # type: ignore[method-assign]
    pool = HandlerPool(16, handler, lambda completion: None)
    pool.parallelism.value = 16  # as after windows of handlers waiting on I/O
    pool.submit([entry_for(ingest.message(n)) for n in range(MANY_CHUNK_MIN)])
    assert len(pool.take(MANY_CHUNK_MIN)) == MANY_CHUNK_MIN
    assert chunks == [MANY_CHUNK_MIN]
    pool.submit([entry_for(ingest.message(n)) for n in range(2 * MANY_CHUNK_MIN)])
    done = pool.take(2 * MANY_CHUNK_MIN)
    pool.close()

    assert [error for _, error in done] == [None] * 2 * MANY_CHUNK_MIN
    assert sorted(chunks) == [MANY_CHUNK_MIN] * 3
    assert broker.client.llen(f"{broker.namespace}:drained") == 3 * MANY_CHUNK_MIN


def test_a_drained_message_costs_no_copy_and_no_call_to_a_middleware_without_enqueue_hooks(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU a drained message costs: decoded afresh, it is marked in place (not copied, then
    copied again for its redis_message_id), and the enqueue hooks go to the middleware that
    define them only, not through every middleware's no-op."""

    @dramatiq.actor(broker=broker, queue_name="drained")
    def ingest(n: int) -> None:
        pass

    messages = [ingest.message(n) for n in range(5)]
    entries = [entry_for(m) for m in messages]
    calls = {"copy": 0, "no-op hook": 0}
    copy = dramatiq.Message.copy

    def counted_copy(self: dramatiq.Message[Any], **attributes: Any) -> dramatiq.Message[Any]:
        calls["copy"] += 1
        return copy(self, **attributes)

    def no_op(self: Middleware, broker: dramatiq.Broker, message: Any, delay: Any = None) -> None:
        calls["no-op hook"] += 1

    monkeypatch.setattr(dramatiq.Message, "copy", counted_copy)
    monkeypatch.setattr(Middleware, "before_enqueue", no_op)
    monkeypatch.setattr(Middleware, "after_enqueue", no_op)
    assert sum(type(m).before_enqueue is no_op for m in broker.middleware) > 3, "the broker's defaults"

    assert make_drain_handler(broker).many(entries) == [None] * 5

    assert calls == {"copy": 0, "no-op hook": 0}
    assert seen(broker).before == seen(broker).after == [m.message_id for m in messages]
    raw = broker.client.hvals(f"{broker.namespace}:drained.msgs")
    written = sorted(dramatiq.Message.decode(r).message_id for r in raw)
    assert written == sorted(m.message_id for m in messages)
    assert all(m.options.get(STATE_OPTION) is None for m in messages), "the sent messages untouched"


def test_a_middleware_added_after_the_first_chunk_gets_the_next_chunks_hooks(broker: RedisBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name="drained")
    def ingest(n: int) -> None:
        pass

    handler = make_drain_handler(broker)
    assert handler.many([entry_for(ingest.message(0))]) == [None]
    late = Seen()
    broker.add_middleware(late)
    message = ingest.message(1)

    assert handler.many([entry_for(message)]) == [None]

    assert late.before == late.after == [message.message_id]
    assert seen(broker).before[-1] == message.message_id


class Faulty(Middleware):
    """Raises an ordinary exception in both enqueue hooks: Dramatiq logs it and goes on."""

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        raise RuntimeError("a bug in a middleware")

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        raise RuntimeError("a bug in a middleware")


def test_an_ordinary_hook_error_is_logged_and_the_message_written_as_emit_before_does(
    broker: RedisBroker, caplog: pytest.LogCaptureFixture
) -> None:
    @dramatiq.actor(broker=broker, queue_name="drained")
    def ingest(n: int) -> None:
        pass

    broker.add_middleware(Faulty())
    message = ingest.message(1)

    with caplog.at_level("CRITICAL"):
        assert make_drain_handler(broker).many([entry_for(message)]) == [None]

    assert broker.client.llen(f"{broker.namespace}:drained") == 1
    assert seen(broker).after == [message.message_id], "the hooks after the faulty one still ran"
    failures = [r for r in caplog.records if "Unexpected failure" in r.getMessage()]
    assert [r.getMessage().split(" of ")[0] for r in failures] == [
        "Unexpected failure in before_enqueue",
        "Unexpected failure in after_enqueue",
    ]
