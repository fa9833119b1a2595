"""Detection against a real Redis: in-flight records, liveness, evidence, and what Retries does.

In-process workers on a StubBroker; the crash itself is real (a child process that segfaults in
an actor while CrashRetries records its delivery).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries, TimeLimit
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.backoff import NoBackoff
from redis.retry import Retry

from dramatiq_mollifier.crash import CrashRetries, CrashVerdict
from dramatiq_mollifier.crash.evidence import Evidence, evidence_path, read_evidence
from dramatiq_mollifier.crash.identity import ProcessIdentity
from dramatiq_mollifier.crash.judge import Unjudged
from dramatiq_mollifier.crash.process import Delivery
from dramatiq_mollifier.crash.store import ProcState
from dramatiq_mollifier.embedded import free_port
from dramatiq_mollifier.errors import MollifierConfigurationError

from .crash_helpers import REPO, message, points, record_of, run_worker

pytestmark = pytest.mark.timeout(60)

CHILD = "tests.apps.crash_stub_child"


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
        install_faulthandler=False,  # leave pytest's own faulthandler alone
        heartbeat_interval_ms=100,
        liveness_timeout_ms=400,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )


@pytest.fixture
def broker(crash_retries: CrashRetries) -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.add_middleware(crash_retries)
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def test_a_real_segfault_is_found_at_the_next_delivery_and_dead_lettered_with_max_retries_0(
    broker: StubBroker,
    crash_retries: CrashRetries,
    redis_url: str,
    reader: InMemoryMetricReader,
) -> None:
    # Given a process that segfaulted while running message M
    message_id = str(uuid.uuid4())
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            CHILD,
            redis_url,
            crash_retries.key_prefix,
            str(crash_retries.evidence_dir),
            message_id,
        ],
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert child.returncode == -11, child.stderr.decode()[-2000:]
    runs: list[str] = []

    @dramatiq.actor(broker=broker, actor_name="boom", max_retries=0)
    def boom() -> None:
        runs.append("ran")

    # When M is delivered again, here
    broker.enqueue(message(message_id, "boom"))
    run_worker(broker)

    # Then the actor did not run, M is dead-lettered, and the crash is counted as SIGSEGV
    assert runs == []
    assert [m.message_id for m in broker.dead_letters] == [message_id]
    assert points(reader, "mollifier.crash_retries") == {
        (("action", "retry_policy"), ("cause", "native_crash"), ("signal", "SIGSEGV")): 1
    }
    assert crash_retries.store.get_record(message_id) is None


def test_worker_crashed_goes_through_retries_and_the_retry_runs_the_actor(
    broker: StubBroker, crash_retries: CrashRetries, redis_client: redis.Redis
) -> None:
    # Given a record left by a process of this host that is gone (a PID whose start time differs)
    identity = ProcessIdentity.current()
    message_id = str(uuid.uuid4())
    crash_retries.store.enter(message_id, record_of(identity, start_ticks=identity.start_ticks + 1))
    runs: list[int] = []

    @dramatiq.actor(broker=broker, actor_name="work", max_retries=1, min_backoff=1, max_backoff=5)
    def work() -> None:
        runs.append(1)

    # When it is delivered
    broker.enqueue(message(message_id))
    run_worker(broker)

    # Then the crashed attempt consumed one retry, and the retry ran the actor once
    assert runs == [1]
    assert broker.dead_letters == []
    assert crash_retries.store.get_record(message_id) is None


def test_a_record_from_a_live_process_of_this_host_is_not_a_crash(crash_retries: CrashRetries) -> None:
    identity = ProcessIdentity.current()
    assert crash_retries.judge(record_of(identity), "m", silent_ms=10**9) is Unjudged.ALIVE


def test_a_death_notice_published_by_the_crashed_host_names_the_signal(crash_retries: CrashRetries) -> None:
    other = record_of(ProcessIdentity.current(), host="elsewhere/pid:[1]", proc_id="other")
    notice = ProcState("dead", 1, Evidence(fatal_signal="SIGBUS"))
    crash_retries.store.put_proc("other", notice, ttl_ms=10_000)
    verdict = crash_retries.judge(other, "m", silent_ms=0)  # proof of death needs no silence
    assert isinstance(verdict, CrashVerdict)
    assert (verdict.signal_name, verdict.cause.value) == ("SIGBUS", "native_crash")


def test_an_out_of_memory_kill_is_dead_lettered_without_using_retries(
    broker: StubBroker, crash_retries: CrashRetries, reader: InMemoryMetricReader
) -> None:
    # Given a record of a process elsewhere whose host published it was OOM-killed
    message_id = str(uuid.uuid4())
    crash_retries.store.enter(
        message_id, record_of(ProcessIdentity.current(), host="elsewhere/pid:[1]", proc_id="oom")
    )
    crash_retries.store.put_proc("oom", ProcState("dead", 1, Evidence(oom_killed=True)), ttl_ms=10_000)
    runs: list[int] = []

    @dramatiq.actor(broker=broker, actor_name="work", max_retries=5, min_backoff=1, max_backoff=5)
    def work() -> None:
        runs.append(1)

    broker.enqueue(message(message_id))
    run_worker(broker)

    assert runs == []
    [dead] = broker.dead_letters
    assert dead.options["crash_signal"] == "SIGKILL"
    assert dead.options["crash_cause"] == "oom"
    assert "retries" not in dead.options  # Retries never saw it
    assert points(reader, "mollifier.crash_retries") == {
        (("action", "failed"), ("cause", "oom"), ("signal", "SIGKILL")): 1
    }


def test_an_out_of_memory_kill_is_retried_when_allowed(
    redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    crash_retries = CrashRetries(
        client=redis_client, key_prefix=key_prefix, evidence_dir=tmp_path, retry_oom_kills=True
    )
    crash_retries.store.put_proc("oom", ProcState("dead", 1, Evidence(oom_killed=True)), ttl_ms=10_000)
    other = record_of(ProcessIdentity.current(), host="elsewhere/pid:[1]", proc_id="oom")
    verdict = crash_retries.judge(other, "m", silent_ms=0)
    assert isinstance(verdict, CrashVerdict) and verdict.retry


def test_clearing_a_record_spares_a_later_delivery_of_the_same_message(crash_retries: CrashRetries) -> None:
    identity = ProcessIdentity.current()
    first, second = record_of(identity), record_of(identity)
    crash_retries.store.enter("m", first)
    crash_retries.store.enter("m", second)  # a retry picked up before the first one cleared
    assert crash_retries.store.release("m", first.token) is False
    assert crash_retries.store.get_record("m") == second.encode().encode()
    assert crash_retries.store.refresh([("m", first.token), ("m", second.token)]) == 1
    assert crash_retries.store.release("m", second.token) is True
    assert crash_retries.store.get_record("m") is None


def test_a_record_whose_release_failed_is_released_again_before_a_clean_exit(
    crash_retries: CrashRetries, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a delivery that ended while Redis failed its release (the record stayed, and after a
    # clean restart the message's next delivery judged it a crash: a retry used up, unrun)
    identity = crash_retries.process.boot()
    record = record_of(identity)
    crash_retries.store.enter("m", record)
    real_release = crash_retries.store.release
    failures = [redis.ConnectionError("Redis stalled")]

    def release(message_id: str, token: str) -> bool:
        if failures:
            raise failures.pop()
        return real_release(message_id, token)

    monkeypatch.setattr(crash_retries.store, "release", release)
    crash_retries.process.release(Delivery("m", record.token, None))
    assert crash_retries.store.get_record("m") is not None

    # When the process shuts down cleanly
    crash_retries.process.end_shutdown()

    # Then the record is gone: nothing is left for a later delivery to judge
    assert crash_retries.store.get_record("m") is None


def test_a_message_overrunning_its_time_limit_is_marked_in_the_evidence_file(
    crash_retries: CrashRetries, tmp_path: Path
) -> None:
    # Given a TimeLimit of 100 ms and an actor stuck in C (time.sleep) for 0.6 s
    broker = StubBroker(middleware=[TimeLimit(time_limit=100, interval=50), Retries()])
    broker.add_middleware(crash_retries)

    @dramatiq.actor(broker=broker, actor_name="work", max_retries=0)
    def work() -> None:
        time.sleep(0.6)  # the overrun under test

    identity = ProcessIdentity.current()
    evidence_file = evidence_path(tmp_path / "evidence", identity.pid, identity.start_ticks)
    sent = broker.enqueue(message(str(uuid.uuid4())))
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join("default", timeout=10_000, fail_fast=False)
        # Then, while the process lives, its evidence file names the overrunning delivery
        evidence = read_evidence(tmp_path / "evidence", identity.pid, identity.start_ticks)
        assert evidence is not None
        assert [overrun.split(" ")[0] for overrun in evidence.overruns] == [sent.message_id]
    finally:
        worker.stop()
        broker.close()
    assert not evidence_file.exists()  # a clean shutdown removes it


@pytest.mark.redis  # how redis-py meets a failing server: rerun with the oldest redis-py
def test_redis_down_fails_open_and_the_actor_runs(tmp_path: Path, reader: InMemoryMetricReader) -> None:
    client = redis.Redis(
        port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    broker = StubBroker()
    broker.add_middleware(
        CrashRetries(
            client=client,
            evidence_dir=tmp_path,
            install_faulthandler=False,
            meter_provider=MeterProvider(metric_readers=[reader]),
        )
    )
    runs: list[int] = []

    @dramatiq.actor(broker=broker, actor_name="work", max_retries=0)
    def work() -> None:
        runs.append(1)

    broker.enqueue(message(str(uuid.uuid4())))
    run_worker(broker)
    broker.close()
    client.close()

    assert runs == [1]
    stages = {dict(key)["stage"] for key in points(reader, "mollifier.crash_fail_open")}
    assert {"enter"} <= stages


def test_without_a_client_the_url_comes_from_the_environment_on_first_use(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("MOLLIFIER_REDIS_URL", redis_url)
    crash_retries = CrashRetries(evidence_dir=tmp_path)  # no I/O here
    assert crash_retries._store is None
    crash_retries.store.put_proc("p", ProcState("running", 1), ttl_ms=1_000)
    assert crash_retries.store.get_proc("p") == ProcState("running", 1)
    crash_retries.store.client.close()


def test_without_a_key_prefix_it_uses_the_mollifiers_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    # Given the prefix the Mollifier beside it is configured with
    monkeypatch.setenv("MOLLIFIER_KEY_PREFIX", f"{key_prefix}-app")
    crash_retries = CrashRetries(client=redis_client, evidence_dir=tmp_path)

    crash_retries.store.put_proc("p", ProcState("running", 1), ttl_ms=60_000)

    assert crash_retries.key_prefix == f"{key_prefix}-app"
    assert redis_client.exists(f"{key_prefix}-app:crash:proc:p")


def test_a_bad_mollifier_setting_is_refused_when_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLLIFIER_REDIS_URL", "redis://localhost:6379/abc")

    with pytest.raises(MollifierConfigurationError, match="MOLLIFIER_REDIS_URL"):
        CrashRetries()


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"heartbeat_interval_ms": 0}, "heartbeat_interval_ms"),
        ({"heartbeat_interval_ms": 1_000, "liveness_timeout_ms": 1_500}, "liveness_timeout_ms"),
        ({"record_ttl_ms": 5_000}, "record_ttl_ms"),
        ({"key_prefix": ""}, "key_prefix"),
        # The wrong type: a string read from an environment variable and passed on as it is.
        ({"heartbeat_interval_ms": "2000"}, "heartbeat_interval_ms must be an int"),
        ({"record_ttl_ms": 7.5e8}, "record_ttl_ms must be an int"),
        ({"liveness_timeout_ms": True}, "liveness_timeout_ms must be an int"),
        ({"repeat_window_ms": None}, "repeat_window_ms must be an int"),
        ({"retry_oom_kills": "false"}, "retry_oom_kills must be True or False"),
        ({"retry_time_limit_kills": 1}, "retry_time_limit_kills must be True or False"),
        ({"install_faulthandler": "no"}, "install_faulthandler must be True or False"),
        ({"key_prefix": b"app"}, "key_prefix must be a non-empty string"),
    ],
)
def test_impossible_settings_are_refused_naming_the_setting(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(MollifierConfigurationError, match=setting):
        CrashRetries(**kwargs)


def test_evidence_of_a_same_host_process_is_read_from_its_file(tmp_path: Path) -> None:
    directory = tmp_path / "evidence"
    directory.mkdir()
    evidence_path(directory, 4242, 7).write_text(
        "dramatiq-mollifier proc=abc oom_kills=-1\nshutdown\nFatal Python error: Aborted\n\nCurrent thread\n"
    )
    evidence = read_evidence(directory, 4242, 7)
    assert evidence is not None
    assert evidence.fatal_signal == "SIGABRT"
    assert evidence.shutdown
    assert evidence.last_words.startswith("Fatal Python error: Aborted")
    assert read_evidence(directory, 4242, 8) is None
    assert os.listdir(directory) == ["4242-7.crash"]
