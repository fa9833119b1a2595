"""The drainer of a worker process: one drainer per worker process, from worker boot to worker shutdown."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.drain.worker_drainer import WorkerDrainer
from dramatiq_mollifier.embedded import EmbeddedRedis
from dramatiq_mollifier.telemetry import Telemetry

from .mollifier_helpers import drainer_threads, eventually


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    yield broker
    broker.close()


def declare_ingest(broker: dramatiq.Broker) -> dramatiq.Actor[Any, Any]:
    def ingest(n: int) -> None:
        pass

    return dramatiq.actor(ingest, broker=broker, max_retries=0)


def seed(buffer: MollifierBuffer, count: int) -> None:
    for n in range(count):
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name="default", actor_name="ingest", args=(n,), kwargs={}, options={}
        )
        buffer.accept(message.message_id, org_id="acme", env_id="prod", payload=message.encode())


def test_worker_drainer_drains_onto_the_broker_until_stopped(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    declare_ingest(broker)
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    seed(buffer, 30)
    # Nothing consumes from a StubBroker, so no slot is ever freed: a fixed budget above 30.
    settings = MollifierSettings(
        enabled=True, key_prefix=key_prefix, drain_poll_interval_ms=10, drain_target_wait_ms=0
    )
    worker_drainer = WorkerDrainer(settings=settings, buffer=buffer, telemetry=Telemetry())
    assert worker_drainer.drainer is None
    before = drainer_threads()

    worker_drainer.start(broker)
    worker_drainer.start(broker)
    eventually(lambda: broker.queues["default"].qsize() == 30)

    assert len(drainer_threads() - before) == 1
    assert worker_drainer.stop() is True
    assert drainer_threads() <= before
    assert buffer.depth() == 0


def test_a_stopped_worker_drainer_closes_its_own_connections(
    broker: StubBroker, disposable_redis: EmbeddedRedis
) -> None:
    declare_ingest(broker)
    # One connection for everything outside the drainer (sends, pace, gauges, this test).
    client = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(disposable_redis.url, max_connections=1)
    )
    buffer = MollifierBuffer(client, key_prefix="closes")
    seed(buffer, 5)
    settings = MollifierSettings(
        enabled=True, key_prefix="closes", drain_poll_interval_ms=10, drain_target_wait_ms=0
    )
    worker_drainer = WorkerDrainer(settings=settings, buffer=buffer, telemetry=Telemetry())
    # A server of its own: every connection but this client's one is the drainer's.
    alone = len(client.client_list())
    assert alone == 1
    try:
        worker_drainer.start(broker)
        eventually(lambda: broker.queues["default"].qsize() == 5)
        assert len(client.client_list()) > alone

        assert worker_drainer.stop() is True
        eventually(lambda: len(client.client_list()) == alone)

        # A later start reconnects.
        seed(buffer, 3)
        worker_drainer.start(broker)
        eventually(lambda: broker.queues["default"].qsize() == 8)
    finally:
        worker_drainer.stop()
        client.close()


def test_the_drain_pace_runs_on_the_drainers_own_connections_without_retries(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # A claim is not safe to run twice: the send path's client retries a command whose reply
    # was lost, which would grant the claim's slots again (held until they expire).
    declare_ingest(broker)
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    settings = MollifierSettings(enabled=True, key_prefix=key_prefix)
    worker_drainer = WorkerDrainer(settings=settings, buffer=buffer, telemetry=Telemetry())
    worker_drainer.start(broker)
    try:
        assert worker_drainer.drainer is not None
        pace = worker_drainer.drainer._pace
        # the drainer's own client (drain_client: its own pool, no retries)
        assert pace is not None and pace.client is worker_drainer._client
        assert pace.client is not redis_client
    finally:
        assert worker_drainer.stop() is True


def test_stopping_a_worker_drainer_that_never_started_returns_at_once(redis_client: redis.Redis) -> None:
    worker_drainer = WorkerDrainer(
        settings=MollifierSettings(), buffer=MollifierBuffer(redis_client), telemetry=Telemetry()
    )

    assert worker_drainer.stop() is True


def test_redis_down_at_boot_is_retried_and_never_raises(
    broker: StubBroker, disposable_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    declare_ingest(broker)
    buffer = MollifierBuffer.from_url(disposable_redis.url, key_prefix="boot")
    disposable_redis.stop()
    settings = MollifierSettings(enabled=True, key_prefix="boot", drain_poll_interval_ms=20)
    worker_drainer = WorkerDrainer(settings=settings, buffer=buffer, telemetry=Telemetry())

    worker_drainer.start(broker)  # must not raise
    eventually(lambda: any("tick failed" in r.getMessage() for r in caplog.records), what="a failed tick")
    disposable_redis.start()  # empty: the embedded server keeps nothing on disk
    seed(buffer, 5)

    eventually(lambda: broker.queues["default"].qsize() == 5)
    assert worker_drainer.stop() is True
    buffer.client.close()


def test_a_worker_boot_starts_the_drainer_and_its_shutdown_stops_it(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    settings = MollifierSettings(enabled=True, key_prefix=key_prefix, drain_poll_interval_ms=10)
    mollifier = Mollifier(settings, client=redis_client)
    broker.add_middleware(mollifier)
    declare_ingest(broker)
    seed(mollifier.buffer, 10)
    assert mollifier.drainer is None

    before = drainer_threads()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert mollifier.drainer is not None
        assert len(drainer_threads() - before) == 1
        eventually(lambda: mollifier.buffer.depth() == 0)
        broker.join("default")
    finally:
        worker.stop()
    assert drainer_threads() <= before
    assert mollifier.drainer is not None and not mollifier.drainer.running


def test_the_drainer_starts_at_worker_boot_and_not_when_a_process_sends(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a process that only sends, as a web server does (drainers enabled explicitly)
    settings = MollifierSettings(
        enabled=True,
        drainer_enabled=True,
        enabled_orgs={"*"},
        trip_threshold=0,
        key_prefix=key_prefix,
        drain_poll_interval_ms=10,
    )
    mollifier = Mollifier(settings, client=redis_client)
    broker.add_middleware(mollifier)
    ingest = declare_ingest(broker)
    before = drainer_threads()

    # When it sends, nothing drains: the entry waits for a worker
    ingest.send_with_options(args=(1,), org_id="acme")
    assert mollifier.buffer.depth() == 1
    assert mollifier.drainer is None
    assert drainer_threads() <= before

    # When the same process boots a worker, the drainer starts then and drains the entry
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert mollifier.drainer is not None
        eventually(lambda: mollifier.buffer.depth() == 0, what="the worker's drainer to drain")
    finally:
        worker.stop()


def test_drainer_enabled_false_keeps_a_worker_from_draining(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    settings = MollifierSettings(
        enabled=True, drainer_enabled=False, enabled_orgs={"*"}, trip_threshold=0, key_prefix=key_prefix
    )
    mollifier = Mollifier(settings, client=redis_client)
    broker.add_middleware(mollifier)
    ingest = declare_ingest(broker)
    ingest.send_with_options(args=(1,), org_id="acme")
    before = drainer_threads()

    # after_worker_boot runs inside start(): had it started a drainer, it would be there now
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert mollifier.drainer is None
        assert drainer_threads() <= before
    finally:
        worker.stop()
    assert mollifier.buffer.depth() == 1


def test_the_drainer_is_built_before_the_workers_consumers_run(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Boot work done once consumers run delays the ready event the `dramatiq` CLI waits for, while
    messages already run; one that kills the process then can freeze the CLI (see prepare)."""
    settings = MollifierSettings(enabled=True, enabled_orgs={"*"}, key_prefix=key_prefix)
    mollifier = Mollifier(settings, client=redis_client)
    broker.add_middleware(mollifier)
    seen: dict[str, object] = {}

    class Probe(dramatiq.Middleware):  # its before hook runs right after the Mollifier's
        def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
            drainer = mollifier.drainer
            seen.update(built=drainer is not None, running=drainer is not None and drainer.running)
            seen["consumers"] = len(worker.consumers)

    broker.add_middleware(Probe())
    declare_ingest(broker)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert seen == {"built": True, "running": False, "consumers": 0}
        assert mollifier.drainer is not None and mollifier.drainer.running
    finally:
        worker.stop()
