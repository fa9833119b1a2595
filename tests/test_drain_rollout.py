"""Rollouts and reboots: entries are handled by the mode that wrote them, and every worker drains.

Real Redis for the buffer; StubBrokers for producers and the draining worker, so every copy of a
message on a broker is counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.worker_drainer import WorkerDrainer
from dramatiq_mollifier.settings import MollifierMode
from dramatiq_mollifier.telemetry import Telemetry

from .mollifier_helpers import THRESHOLD, add_mollifier, drainer_threads, eventually

BURST = 50


@pytest.fixture
def brokers() -> Iterator[list[StubBroker]]:
    made: list[StubBroker] = []
    yield made
    for broker in made:
        broker.close()


def new_broker(brokers: list[StubBroker]) -> StubBroker:
    broker = StubBroker()
    brokers.append(broker)
    return broker


def declare_ingest(broker: dramatiq.Broker) -> dramatiq.Actor[Any, Any]:
    def ingest(n: int) -> None:
        pass

    return dramatiq.actor(ingest, broker=broker, max_retries=0)


def ids_on(*brokers: StubBroker) -> Counter[str]:
    """How many copies of each message id the brokers' queues hold."""
    found: Counter[str] = Counter()
    for broker in brokers:
        for queue in broker.queues.values():
            for raw in list(queue.queue):
                found[dramatiq.Message.decode(raw).message_id] += 1
    return found


def produce(
    brokers: list[StubBroker], client: redis.Redis, key_prefix: str, mode: MollifierMode
) -> StubBroker:
    """A producer in ``mode`` sends a burst that trips its own env: THRESHOLD to its broker, the
    rest diverted (env ``divert`` or ``dual_write``, named for the mode).
    """
    broker = new_broker(brokers)
    add_mollifier(broker, client, key_prefix, mode=mode)
    ingest = declare_ingest(broker)
    for n in range(BURST):
        ingest.send_with_options(args=(n,), org_id="acme", env_id=mode.value)
    return broker


def drain_all(
    brokers: list[StubBroker], client: redis.Redis, key_prefix: str, mode: MollifierMode
) -> StubBroker:
    """A worker whose drainer runs in ``mode`` empties the buffer onto a broker of its own."""
    broker = new_broker(brokers)
    declare_ingest(broker)
    # A StubBroker's messages are never started, so no budget slot is freed: a fixed budget.
    settings = MollifierSettings(
        enabled=True, key_prefix=key_prefix, mode=mode, drain_poll_interval_ms=10, drain_target_wait_ms=0
    )
    buffer = MollifierBuffer(client, **settings.buffer_options)
    worker_drainer = WorkerDrainer(settings=settings, buffer=buffer, telemetry=Telemetry())
    worker_drainer.start(broker)
    try:
        eventually(lambda: buffer.depth() == 0, what="the buffer to drain")
    finally:
        assert worker_drainer.stop() is True
    return broker


@pytest.mark.parametrize(
    "drainer_mode",
    [MollifierMode.DUAL_WRITE, MollifierMode.DIVERT],
    ids=["old-workers-still-dual-write", "rolled-back-producers-meet-divert-workers"],
)
def test_a_mixed_mode_fleet_delivers_every_message_exactly_once(
    brokers: list[StubBroker], redis_client: redis.Redis, key_prefix: str, drainer_mode: MollifierMode
) -> None:
    # Given producers in both modes buffering over the same key prefix
    dual_writer = produce(brokers, redis_client, key_prefix, MollifierMode.DUAL_WRITE)
    diverter = produce(brokers, redis_client, key_prefix, MollifierMode.DIVERT)
    assert sum(ids_on(dual_writer).values()) == BURST
    assert sum(ids_on(diverter).values()) == THRESHOLD

    # When a drainer in either mode drains the whole buffer
    worker = drain_all(brokers, redis_client, key_prefix, drainer_mode)

    # Then every message sent is on some broker exactly once: divert entries re-enqueued by the
    # drainer, dual_write entries only audited (the broker already had them)
    copies = ids_on(dual_writer, diverter, worker)
    assert len(copies) == 2 * BURST
    assert set(copies.values()) == {1}
    assert sum(ids_on(worker).values()) == BURST - THRESHOLD


def test_entries_record_the_mode_of_the_gate_that_wrote_them(
    brokers: list[StubBroker], redis_client: redis.Redis, key_prefix: str
) -> None:
    produce(brokers, redis_client, key_prefix, MollifierMode.DUAL_WRITE)
    produce(brokers, redis_client, key_prefix, MollifierMode.DIVERT)
    protocol = DrainProtocol(MollifierBuffer(redis_client, key_prefix=key_prefix))

    popped = [*protocol.pop_many("acme", "dual_write", BURST), *protocol.pop_many("acme", "divert", BURST)]

    assert Counter(entry.mode for entry in popped) == {
        "dual_write": BURST - THRESHOLD,
        "divert": BURST - THRESHOLD,
    }


def test_a_second_worker_started_after_the_first_stopped_drains(
    brokers: list[StubBroker], redis_client: redis.Redis, key_prefix: str
) -> None:
    broker = new_broker(brokers)
    settings = MollifierSettings(enabled=True, key_prefix=key_prefix, drain_poll_interval_ms=10)
    mollifier = Mollifier(settings, client=redis_client)
    broker.add_middleware(mollifier)
    ingest = declare_ingest(broker)
    before = drainer_threads()
    first = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    first.start()
    first.stop()

    # A message buffered between the two workers
    mollifier.buffer.accept("between", org_id="acme", env_id="prod", payload=ingest.message(1).encode())
    second = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    second.start()
    try:
        eventually(lambda: mollifier.buffer.depth() == 0, what="the second worker to drain")
        assert len(drainer_threads() - before) == 1
    finally:
        second.stop()
    assert drainer_threads() <= before


def test_a_rolling_switch_and_its_rollback_with_drainers_in_both_modes_lose_and_duplicate_nothing(
    brokers: list[StubBroker], redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given half the workers switched to divert while the other half still dual-write, both draining
    workers: list[StubBroker] = []
    drainers: list[WorkerDrainer] = []
    for mode in (MollifierMode.DUAL_WRITE, MollifierMode.DIVERT):
        worker = new_broker(brokers)
        declare_ingest(worker)
        settings = MollifierSettings(
            enabled=True, key_prefix=key_prefix, mode=mode, drain_poll_interval_ms=10
        )
        buffer = MollifierBuffer(redis_client, **settings.buffer_options)
        drainer = WorkerDrainer(settings=settings, buffer=buffer, telemetry=Telemetry())
        drainer.start(worker)
        workers.append(worker)
        drainers.append(drainer)
    try:
        # When producers send in dual_write, then divert (the switch), then dual_write (the rollback)
        producers = [
            produce(brokers, redis_client, key_prefix, mode)
            for mode in (MollifierMode.DUAL_WRITE, MollifierMode.DIVERT, MollifierMode.DUAL_WRITE)
        ]
        buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
        eventually(lambda: buffer.depth() == 0, what="both drainers to empty the buffer")
    finally:
        for drainer in drainers:
            assert drainer.stop() is True

    # Then every message sent is on some broker exactly once, whichever drainer took its entry
    copies = ids_on(*producers, *workers)
    assert len(copies) == 3 * BURST
    assert set(copies.values()) == {1}
    assert sum(ids_on(*workers).values()) == BURST - THRESHOLD
