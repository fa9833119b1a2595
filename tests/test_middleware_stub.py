"""The middleware on a StubBroker, with the buffer on a real Redis server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.errors import DuplicateMollifierError
from dramatiq_mollifier.gate import interception
from dramatiq_mollifier.models import STATE_DRAINED, STATE_OPTION, marker

from .layout_helpers import entry_key
from .mollifier_helpers import THRESHOLD, add_mollifier, decisions, eventually, metrics, total


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def on_stub_broker(broker: StubBroker, queue_name: str = "default") -> list[dramatiq.Message[Any]]:
    return [dramatiq.Message.decode(data) for data in list(broker.queues[queue_name].queue)]


def drain_by_hand(mollifier: Mollifier, broker: dramatiq.Broker, org: str, env: str) -> list[str]:
    """What the drainer's handler does: re-enqueue each stored message with the drained marker."""
    ids = []
    while (entry := DrainProtocol(mollifier.buffer).pop(org, env)) is not None:
        stored = dramatiq.Message.decode(entry.payload)
        broker.enqueue(stored.copy(options=marker(STATE_DRAINED, stored.message_id)))
        DrainProtocol(mollifier.buffer).ack(entry.message_id)
        ids.append(entry.message_id)
    return ids


def test_a_burst_puts_exactly_threshold_on_the_broker_and_the_rest_in_the_buffer(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix)

    @dramatiq.actor(broker=broker)
    def ingest(n: int) -> None: ...

    sent = [ingest.send_with_options(args=(n,), org_id="acme", env_id="prod") for n in range(50)]

    assert all(isinstance(message, dramatiq.Message) for message in sent)
    on_broker = {message.message_id for message in on_stub_broker(broker)}
    diverted = {message.message_id for message in sent} - on_broker
    assert len(on_broker) == THRESHOLD
    assert mollifier.buffer.depth("acme", "prod") == 50 - THRESHOLD
    for message in sent:
        entry = mollifier.buffer.get(message.message_id)
        assert (entry is not None) is (message.message_id in diverted)
        if entry is not None:
            stored = dramatiq.Message.decode(entry.payload)
            assert (stored.message_id, stored.args, stored.options.get("org_id")) == (
                message.message_id,
                message.args,
                "acme",
            )
            assert STATE_OPTION not in stored.options
    assert decisions(reader) == {
        ("pass_through", "below_threshold", True): THRESHOLD,
        ("mollify", "per_env_rate", True): 50 - THRESHOLD,
    }
    assert total(reader, "mollifier.buffered") == 50 - THRESHOLD


def test_envs_and_orgs_trip_independently(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, _ = add_mollifier(broker, redis_client, key_prefix, enabled_orgs={"*"}, trip_threshold=2)

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    for org, env in [("a", "prod"), ("a", "staging"), ("b", "prod")] * 3:
        ingest.send_with_options(org_id=org, env_id=env)

    assert broker.queues["default"].qsize() == 6
    assert [
        mollifier.buffer.depth(org, env) for org, env in [("a", "prod"), ("a", "staging"), ("b", "prod")]
    ] == [
        1,
        1,
        1,
    ]


def test_disabled_does_nothing_at_all(broker: StubBroker) -> None:
    provider, reader = metrics()
    # The client points at a closed port: the disabled path must not reach Redis.
    mollifier = Mollifier(
        MollifierSettings(enabled=False, enabled_orgs={"*"}),
        client=redis.Redis(port=1),
        meter_provider=provider,
    )
    broker.add_middleware(mollifier)

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    sent = ingest.send_with_options(org_id="acme")

    assert not interception.is_installed(broker)
    assert broker.queues["default"].qsize() == 1
    assert sent.options == {"org_id": "acme"}
    assert reader.get_metrics_data() is None or total(reader, "mollifier.decisions") == 0


def test_the_enqueue_wrapper_is_installed_once_also_for_actors_declared_before(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    @dramatiq.actor(broker=broker)
    def early() -> None: ...

    add_mollifier(broker, redis_client, key_prefix, trip_threshold=0)
    wrapper = broker.enqueue

    @dramatiq.actor(broker=broker)
    def late() -> None: ...

    assert interception.is_installed(broker)
    assert broker.enqueue is wrapper
    early.send_with_options(org_id="acme")
    assert broker.queues["default"].qsize() == 0


def test_a_second_mollifier_on_one_broker_is_refused_at_startup(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # The second one never gated (the first decides each enqueue) and ran a drainer of its own.
    # Added after an actor was declared: add_middleware raises
    @dramatiq.actor(broker=broker)
    def early() -> None: ...

    add_mollifier(broker, redis_client, key_prefix)
    with pytest.raises(DuplicateMollifierError, match="the broker has 2 Mollifier middleware"):
        add_mollifier(broker, redis_client, key_prefix + "-second")

    # Added before any actor: the declaration raises, and a worker refuses to boot
    other = StubBroker()
    add_mollifier(other, redis_client, key_prefix)
    add_mollifier(other, redis_client, key_prefix + "-second")
    with pytest.raises(DuplicateMollifierError):

        @dramatiq.actor(broker=other)
        def late() -> None: ...

    worker = dramatiq.Worker(other, worker_threads=1)
    with pytest.raises(DuplicateMollifierError):
        worker.start()
    assert not worker.workers
    other.close()


@pytest.mark.parametrize("enrolled", [True, False], ids=["enrolled", "not-enrolled"])
@pytest.mark.parametrize("evaluator", ["local", "exact"])
def test_after_a_resume_sends_join_the_paused_backlog_instead_of_overtaking_it(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str, evaluator: str, enrolled: bool
) -> None:
    # The paused sends were buffered without the evaluator hearing of it: after the resume the
    # same process passed its next sends to the broker ahead of them (an org not enrolled: always)
    orgs = {"acme"} if enrolled else {"globex"}
    mollifier, reader = add_mollifier(
        broker, redis_client, key_prefix, trip_evaluator=evaluator, enabled_orgs=orgs
    )

    @dramatiq.actor(broker=broker)
    def ingest(n: int) -> None: ...

    def paused() -> bool:
        return ("acme", "prod") in mollifier.rules.current().paused

    mollifier.controls.pause("acme", "prod")
    eventually(paused, what="the pause to reach the gate")
    for n in range(3):
        ingest.send_with_options(args=(n,), org_id="acme", env_id="prod")
    assert mollifier.buffer.depth("acme", "prod") == 3

    mollifier.controls.resume("acme", "prod")
    eventually(lambda: not paused(), what="the resume to reach the gate")
    for n in range(3, 6):
        assert ingest.send_with_options(args=(n,), org_id="acme", env_id="prod").options.get("mollified")

    assert broker.queues["default"].qsize() == 0
    assert mollifier.buffer.depth("acme", "prod") == 6
    # Once the backlog is drained, the org's sends pass again (not enrolled: never diverted).
    drained = drain_by_hand(mollifier, broker, "acme", "prod")
    assert [message.args[0] for message in on_stub_broker(broker)] == list(range(6))
    assert len(drained) == 6
    assert not ingest.send_with_options(args=(6,), org_id="acme", env_id="prod").options.get("mollified")
    assert broker.queues["default"].qsize() == 7
    if not enrolled:
        assert decisions(reader)[("pass_through", "not_enrolled", False)] == 1


def test_the_first_message_on_a_broker_without_actors_cannot_be_diverted_the_next_can(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    broker.declare_queue("default")
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0)

    def message() -> dramatiq.Message[Any]:
        return dramatiq.Message(
            queue_name="default", actor_name="remote", args=(), kwargs={}, options={"org_id": "acme"}
        )

    broker.enqueue(message())
    broker.enqueue(message())

    assert broker.queues["default"].qsize() == 1
    assert mollifier.buffer.depth() == 1
    assert decisions(reader) == {
        ("pass_through", "bypass_unintercepted", False): 1,
        ("mollify", "per_env_rate", True): 1,
    }


def test_an_actor_declared_with_mollifier_false_is_never_diverted(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0)

    @dramatiq.actor(broker=broker, mollifier=False)
    def audit() -> None: ...

    for _ in range(3):
        audit.send_with_options(org_id="acme")

    assert broker.queues["default"].qsize() == 3
    assert mollifier.buffer.depth() == 0
    assert decisions(reader) == {("pass_through", "bypass_actor_opt_out", False): 3}


def test_a_message_without_a_tenant_is_never_diverted(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    _mollifier, reader = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0)

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    ingest.send()

    assert broker.queues["default"].qsize() == 1
    assert decisions(reader) == {("pass_through", "bypass_no_tenant", False): 1}


def test_dual_write_puts_the_message_on_the_broker_and_a_copy_with_a_ttl_in_the_buffer(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, mode="dual_write", trip_threshold=0)

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    sent = ingest.send_with_options(org_id="acme", env_id="prod")

    assert [m.message_id for m in on_stub_broker(broker)] == [sent.message_id]
    entry = mollifier.buffer.get(sent.message_id)
    assert entry is not None
    ttl = redis_client.ttl(entry_key(mollifier.buffer, sent.message_id, "acme"))
    assert 0 < ttl <= 600
    assert decisions(reader) == {("mollify", "per_env_rate", True): 1}


def test_a_drained_message_that_fails_is_retried_through_the_delay_queue_without_being_diverted(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given an env tripped for longer than the test, with one message in the buffer
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0, trip_hold_ms=60_000)
    runs: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=3, min_backoff=10, max_backoff=20)
    def flaky(n: int) -> None:
        runs.append(n)
        if len(runs) == 1:
            raise RuntimeError("first attempt fails")

    sent = flaky.send_with_options(args=(7,), org_id="acme", env_id="prod")
    assert mollifier.buffer.depth() == 1

    # When it is drained, fails once, is retried (delay queue) and promoted by a real Worker
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        assert drain_by_hand(mollifier, broker, "acme", "prod") == [sent.message_id]
        broker.join(flaky.queue_name, timeout=10_000)
        worker.join()
    finally:
        worker.stop()

    # Then it ran twice and never went back to the buffer
    assert runs == [7, 7]
    assert mollifier.buffer.depth() == 0
    assert decisions(reader) == {
        ("mollify", "per_env_rate", True): 1,
        # the drained enqueue, then the retry (delayed: admitted, so that a pause would hold it
        # when due) and its promotion from the delay queue
        ("pass_through", "bypass_drained", False): 1,
        ("pass_through", "bypass_delayed", False): 1,
        ("pass_through", "bypass_admitted", False): 1,
    }


def test_an_admitted_message_is_retried_and_promoted_without_being_diverted(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, trip_threshold=1, trip_hold_ms=60_000)
    runs: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=3, min_backoff=10, max_backoff=20)
    def flaky(n: int) -> None:
        runs.append(n)
        if n == 1 and runs.count(1) == 1:
            raise RuntimeError("first attempt fails")

    admitted = flaky.send_with_options(args=(1,), org_id="acme")  # count 1: admitted
    flaky.send_with_options(args=(2,), org_id="acme")  # count 2: the env trips, diverted
    assert STATE_OPTION not in admitted.options  # the caller's message is never marked
    assert mollifier.buffer.depth() == 1

    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join(flaky.queue_name, timeout=10_000)
        worker.join()
    finally:
        worker.stop()

    assert runs == [1, 1]
    assert mollifier.buffer.depth() == 1
    assert decisions(reader) == {
        ("pass_through", "below_threshold", True): 1,
        ("mollify", "per_env_rate", True): 1,
        # the retry is delayed (and marked admitted), so its promotion bypasses
        ("pass_through", "bypass_delayed", False): 1,
        ("pass_through", "bypass_admitted", False): 1,
    }


def test_a_delayed_send_bypasses_and_is_not_diverted_when_promoted(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0, trip_hold_ms=60_000)
    runs: list[str] = []

    @dramatiq.actor(broker=broker)
    def later() -> None:
        runs.append("ran")

    later.send_with_options(org_id="acme")  # trips the env
    later.send_with_options(org_id="acme", delay=50)

    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join(later.queue_name, timeout=10_000)
        worker.join()
    finally:
        worker.stop()

    assert runs == ["ran"]
    assert mollifier.buffer.depth() == 1
    assert decisions(reader) == {
        ("mollify", "per_env_rate", True): 1,
        ("pass_through", "bypass_delayed", False): 1,
        ("pass_through", "bypass_admitted", False): 1,
    }


def test_an_injected_client_that_could_stall_sends_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    settings = MollifierSettings(enabled=True)

    Mollifier(settings, client=redis.Redis(port=1, socket_timeout=0.5, retry=None))
    assert "could" not in caplog.text and "may wait" not in caplog.text
    Mollifier(settings, client=redis.Redis(port=1))  # redis-py's default: ten retries

    assert "each send() may wait that long" in caplog.text
