"""The verdict on a record left by a process on another host, against a real Redis.

Without proof of death, silence decides, and only a long one: the process must have left both its
heartbeat key and the message's own record unrefreshed for ``liveness_timeout_ms``. Until then the
delivery is not judged (its process may be frozen or cut off and still running the message), the
earlier record stays for a later delivery, and the worker thread never waits for a verdict.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from dramatiq_mollifier.crash import CrashRetries
from dramatiq_mollifier.crash.identity import ProcessIdentity
from dramatiq_mollifier.crash.store import DeliveryRecord, ProcState

from .crash_helpers import message, points, record_of, run_worker
from .mollifier_helpers import eventually

pytestmark = pytest.mark.timeout(60)

LIVENESS_MS = 5_000
ELSEWHERE = "elsewhere/pid:[1]"


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def crash_retries(
    redis_client: redis.Redis, key_prefix: str, tmp_path: Path, reader: InMemoryMetricReader
) -> CrashRetries:
    return CrashRetries(
        client=redis_client,
        key_prefix=key_prefix,
        evidence_dir=tmp_path / "evidence",
        install_faulthandler=False,
        heartbeat_interval_ms=100,
        liveness_timeout_ms=LIVENESS_MS,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )


@pytest.fixture
def broker(crash_retries: CrashRetries) -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.add_middleware(crash_retries)
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def remote_record(crash_retries: CrashRetries, message_id: str, *, silent_ms: int) -> DeliveryRecord:
    """A record a process on another host wrote, last refreshed ``silent_ms`` ago."""
    record = record_of(
        ProcessIdentity.current(), host=ELSEWHERE, proc_id="other", ttl_ms=crash_retries.record_ttl_ms
    )
    crash_retries.store.enter(message_id, record)
    key = crash_retries.store.message_key(message_id)
    crash_retries.store.client.pexpire(key, crash_retries.record_ttl_ms - silent_ms)
    return record


def run_max_retries_0(broker: StubBroker, message_id: str) -> tuple[list[int], float]:
    """Deliver ``message_id`` to an actor with max_retries=0; its runs and the seconds it took."""
    runs: list[int] = []

    @dramatiq.actor(broker=broker, actor_name="work", max_retries=0)
    def work() -> None:
        runs.append(1)

    started = time.monotonic()
    broker.enqueue(message(message_id))
    run_worker(broker)
    return runs, time.monotonic() - started


def test_a_remote_process_that_beat_recently_is_not_judged_and_keeps_its_record(
    broker: StubBroker, crash_retries: CrashRetries, reader: InMemoryMetricReader
) -> None:
    # Given a record on another host refreshed 1 s ago, its process's heartbeat key still there
    # (frozen or partitioned since: it never beats again)
    message_id = str(uuid.uuid4())
    prior = remote_record(crash_retries, message_id, silent_ms=1_000)
    crash_retries.store.put_proc("other", ProcState("running", 1), ttl_ms=60_000)

    # When the broker delivers the message again here
    runs, took_s = run_max_retries_0(broker, message_id)

    # Then it runs, nothing is counted or dead-lettered, and no thread waited for the silence
    assert runs == [1]
    assert broker.dead_letters == []
    assert points(reader, "mollifier.crash_retries") == {}
    assert points(reader, "mollifier.crash_undecided") == {(): 1}
    assert took_s < LIVENESS_MS / 2000
    # And the earlier record is back as it was, for a later delivery to judge
    assert crash_retries.store.get_record(message_id) == prior.encode().encode()
    pttl = crash_retries.store.client.pttl(crash_retries.store.message_key(message_id))
    assert crash_retries.record_ttl_ms - 60_000 < pttl <= crash_retries.record_ttl_ms - 1_000


def test_a_remote_process_whose_heartbeat_key_is_gone_but_whose_record_is_fresh_is_not_judged(
    broker: StubBroker, crash_retries: CrashRetries, reader: InMemoryMetricReader
) -> None:
    # Given a record refreshed 1 s ago and no heartbeat key (expired in a pause, lost on failover)
    message_id = str(uuid.uuid4())
    remote_record(crash_retries, message_id, silent_ms=1_000)

    runs, _ = run_max_retries_0(broker, message_id)

    # Then it is not taken for a crash (with max_retries=0 it would be dead-lettered)
    assert runs == [1]
    assert broker.dead_letters == []
    assert points(reader, "mollifier.crash_retries") == {}


def test_a_remote_process_silent_on_both_for_the_liveness_timeout_is_a_crash(
    broker: StubBroker, crash_retries: CrashRetries, reader: InMemoryMetricReader
) -> None:
    # Given no heartbeat key and a record nobody refreshed for longer than the liveness timeout
    message_id = str(uuid.uuid4())
    remote_record(crash_retries, message_id, silent_ms=LIVENESS_MS + 1_000)

    runs, _ = run_max_retries_0(broker, message_id)

    # Then the earlier attempt is counted (unknown signal) and, with max_retries=0, dead-lettered
    assert runs == []
    assert [m.message_id for m in broker.dead_letters] == [message_id]
    assert points(reader, "mollifier.crash_retries") == {
        (("action", "retry_policy"), ("cause", "unknown"), ("signal", "unknown")): 1
    }
    assert crash_retries.store.get_record(message_id) is None


def test_a_live_remote_process_that_stopped_refreshing_the_record_hands_it_over(
    broker: StubBroker, crash_retries: CrashRetries, reader: InMemoryMetricReader
) -> None:
    # Given a process elsewhere that still beats but left this record unrefreshed (it ended the
    # message and could not clear the record)
    message_id = str(uuid.uuid4())
    remote_record(crash_retries, message_id, silent_ms=LIVENESS_MS + 1_000)
    crash_retries.store.put_proc("other", ProcState("running", 1), ttl_ms=60_000)

    runs, _ = run_max_retries_0(broker, message_id)

    # Then the delivery takes the record over, runs, and clears it at the end
    assert runs == [1]
    assert points(reader, "mollifier.crash_retries") == {}
    assert points(reader, "mollifier.crash_undecided") == {}
    assert crash_retries.store.get_record(message_id) is None


def test_each_heartbeat_refreshes_the_records_of_the_messages_the_process_runs(
    broker: StubBroker, crash_retries: CrashRetries
) -> None:
    # Given a message running here, whose record has been left to age by 60 s
    release = threading.Event()
    started = threading.Event()

    @dramatiq.actor(broker=broker, actor_name="work", max_retries=0)
    def work() -> None:
        started.set()
        release.wait(20)

    sent = broker.enqueue(message(str(uuid.uuid4())))
    key = crash_retries.store.message_key(sent.message_id)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        assert started.wait(10)
        client = crash_retries.store.client
        client.pexpire(key, crash_retries.record_ttl_ms - 60_000)

        # Then the process's heartbeat sets its time to live back to the full value
        eventually(lambda: client.pttl(key) > crash_retries.record_ttl_ms - 10_000, what="a refresh")
    finally:
        release.set()
        broker.join("default", timeout=10_000)
        worker.stop()
    assert crash_retries.store.get_record(sent.message_id) is None
