"""The real ``dramatiq`` CLI, an actor that really segfaults, and a supervisor that restarts it.

Each test runs ``dramatiq tests.apps.crash_app --processes 1 --threads 1`` as a subprocess and
starts it again whenever it exits (the CLI stops as a whole when its worker process dies), until
the work is done or a bounded deadline passes. The actor counts its runs in Redis itself, before
it crashes, so the counts survive the crash.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .crash_helpers import (
    CrashApp,
    Supervisor,
    count,
    crashes,
    in_flight_records,
    rabbitmq_dead_letters,
    redis_dead_letters,
)
from .mollifier_helpers import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture
def app(broker_url: str, redis_url: str, tmp_path: Path) -> CrashApp:
    return CrashApp("redis", broker_url, redis_url, tmp_path / "evidence")


@pytest.fixture
def supervisor(app: CrashApp, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Supervisor]:
    # Parametrized indirectly with "gevent" to run the CLI's gevent launcher instead.
    supervisor = Supervisor(app, tmp_path / "dramatiq.log", gevent=getattr(request, "param", "") == "gevent")
    yield supervisor
    supervisor.terminate()


@pytest.mark.parametrize("supervisor", ["threads", "gevent"], indirect=True)
def test_segfaulting_actor_runs_max_retries_plus_one_times_then_is_dead_lettered(
    app: CrashApp, supervisor: Supervisor, redis_client: redis.Redis
) -> None:
    # Given normal messages around one that segfaults its worker every time (max_retries=2)
    for _ in range(3):
        app.send("normal", "normal-runs")
    crashing = app.send("crash_max2", "crash-runs")
    for _ in range(3):
        app.send("normal", "normal-runs")

    # When the CLI is restarted after each crash until the message is dead-lettered
    done = supervisor.run_until(lambda: crashing in redis_dead_letters(app), timeout_s=45)

    # Then the actor body ran 1 + max_retries times and each crash was seen as SIGSEGV
    assert done, supervisor.log()
    assert count(redis_client, "crash-runs") == 3
    assert crashes(redis_client, app) == [f"{crashing} SIGSEGV native_crash"] * 3
    dead = redis_dead_letters(app)[crashing]
    assert dead.options["crash_signal"] == "SIGSEGV"
    assert dead.options["retries"] == 2
    assert "WorkerCrashed" in dead.options["traceback"]
    assert "Segmentation fault" in dead.options["traceback"]
    # And the normal messages alongside all ran, none dead-lettered. (One that finished just
    # before a crash may run twice: its ack died with the process, as with Dramatiq alone.)
    assert supervisor.run_until(lambda: count(redis_client, "normal-runs") >= 6, timeout_s=15)
    assert supervisor.terminate() == 0
    assert set(redis_dead_letters(app)) == {crashing}
    assert supervisor.exit_codes.count(1) == 3  # the CLI exited once per crash (RET_KILLED)
    assert in_flight_records(redis_client, app) == []


def test_actor_without_retries_is_dead_lettered_on_its_first_crash(
    app: CrashApp, supervisor: Supervisor, redis_client: redis.Redis
) -> None:
    crashing = app.send("crash_max0", "crash-runs")

    done = supervisor.run_until(lambda: crashing in redis_dead_letters(app), timeout_s=30)

    assert done, supervisor.log()
    assert count(redis_client, "crash-runs") == 1
    assert crashes(redis_client, app) == [f"{crashing} SIGSEGV native_crash"]


def test_a_process_dying_between_the_verdict_and_retries_does_not_run_the_actor_again(
    app: CrashApp, supervisor: Supervisor, redis_client: redis.Redis
) -> None:
    # Given an actor without retries that segfaults, and a process that dies once right after
    # CrashRetries' verdict on it and before Retries dead-letters it (a sibling thread's crash)
    crashing = app.send("crash_then_killed", "crash-runs")

    done = supervisor.run_until(lambda: crashing in redis_dead_letters(app), timeout_s=45)

    # Then the next delivery judges again instead of running the actor: it ran once in all
    assert done, supervisor.log()
    assert count(redis_client, f"{app.prefix}:test:verdict-kills") == 2
    assert count(redis_client, "crash-runs") == 1
    assert in_flight_records(redis_client, app) == []


def test_retry_when_that_refuses_a_crash_stops_it_at_once(
    app: CrashApp, supervisor: Supervisor, redis_client: redis.Redis
) -> None:
    # Given an actor with max_retries=20 whose retry_when refuses WorkerCrashed
    crashing = app.send("crash_refused", "crash-runs")

    done = supervisor.run_until(lambda: crashing in redis_dead_letters(app), timeout_s=30)

    assert done, supervisor.log()
    assert count(redis_client, "crash-runs") == 1
    assert crashes(redis_client, app) == [f"{crashing} SIGSEGV native_crash"]


def test_clean_shutdown_with_messages_in_flight_counts_no_crash(
    app: CrashApp, supervisor: Supervisor, redis_client: redis.Redis
) -> None:
    # Given a message running (1.5 s) and more prefetched or queued behind it
    app.send("slow", "slow", 1.5)
    for _ in range(3):
        app.send("normal", "normal-runs")
    assert supervisor.run_until(lambda: count(redis_client, "slow:started") == 1, timeout_s=20)

    # When the CLI gets SIGTERM (a deploy), finishes the running message and exits cleanly
    assert supervisor.terminate() == 0

    # Then, once started again, everything runs exactly once and no crash is counted
    done = supervisor.run_until(lambda: count(redis_client, "normal-runs") == 3, timeout_s=20)
    assert done, supervisor.log()
    assert supervisor.terminate() == 0
    assert count(redis_client, "slow:started") == 1
    assert count(redis_client, "slow:done") == 1
    assert crashes(redis_client, app) == []
    assert redis_dead_letters(app) == {}
    assert in_flight_records(redis_client, app) == []


def test_message_abandoned_by_a_shutdown_timeout_is_retried_as_sigterm(
    app: CrashApp, tmp_path: Path, redis_client: redis.Redis
) -> None:
    # Given a worker whose shutdown timeout (0.5 s) is shorter than the running message (30 s)
    supervisor = Supervisor(app, tmp_path / "dramatiq.log", "--worker-shutdown-timeout", "500")
    try:
        message_id = app.send("slow", "slow", 30)
        assert supervisor.run_until(lambda: count(redis_client, "slow:started") == 1, timeout_s=20)

        # When it is stopped, abandoning the message, and started again
        supervisor.terminate()
        done = supervisor.run_until(lambda: count(redis_client, "slow:done") == 1, timeout_s=30)

        # Then the abandoned attempt counts as one crash, classified SIGTERM, and the retry runs
        assert done, supervisor.log()
        assert crashes(redis_client, app) == [f"{message_id} SIGTERM shutdown"]
        assert count(redis_client, "slow:started") == 2
    finally:
        supervisor.terminate()


@pytest.mark.rabbitmq
@pytest.mark.timeout(150)  # four crash-and-restart cycles; a restart takes 10 s or more under load
def test_rabbitmq_segfaulting_actor_counts_hold(
    rabbitmq_url: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Given the same app on RabbitMQ, which requeues a dead consumer's messages at once
    app = CrashApp("rabbitmq", rabbitmq_url, redis_url, tmp_path / "evidence")
    supervisor = Supervisor(app, tmp_path / "dramatiq.log")
    try:
        app.send("normal", "normal-runs")
        twice = app.send("crash_max2", "crash2-runs")
        never = app.send("crash_max0", "crash0-runs")
        app.send("normal", "normal-runs")

        def both_dead_lettered() -> bool:
            return {twice, never} <= set(rabbitmq_dead_letters(rabbitmq_url, app))

        done = supervisor.run_until(both_dead_lettered, timeout_s=100)

        assert done, supervisor.log()
        assert count(redis_client, "crash2-runs") == 3
        assert count(redis_client, "crash0-runs") == 1
        assert sorted(crashes(redis_client, app)) == sorted(
            [f"{twice} SIGSEGV native_crash"] * 3 + [f"{never} SIGSEGV native_crash"]
        )
        # (A normal message that finished just before a crash may run twice: its ack died with
        # the process. The crashing messages' counts above hold even so: see crash/repeats.py.)
        assert supervisor.run_until(lambda: count(redis_client, "normal-runs") >= 2, timeout_s=15)
        assert supervisor.terminate() == 0
        assert in_flight_records(redis_client, app) == []
    finally:
        supervisor.terminate()


def test_a_frozen_worker_on_another_host_keeps_its_message_and_no_crash_is_counted(
    broker_url: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Given two workers playing two hosts (liveness timeout 15 s), and worker A running a message
    # of an actor with max_retries=0
    on_a = CrashApp("redis", broker_url, redis_url, tmp_path / "a", host="host-a", liveness_ms=15_000)
    on_b = dataclasses.replace(on_a, evidence_dir=tmp_path / "b", host="host-b")
    a, b = Supervisor(on_a, tmp_path / "a.log"), Supervisor(on_b, tmp_path / "b.log")
    message_id = on_a.send("held", "held", 2.0)
    try:
        a.start()
        # (The actor records its PID just after it counts the start: wait for the PID itself. A
        # PID read as 0 would make os.kill stop this test's whole process group, pytest with it.)
        eventually(lambda: count(redis_client, "held:pid:1") > 1, 20, "A to start the message")
        frozen = count(redis_client, "held:pid:1")
        assert frozen != os.getpid()

        # When A's worker process is frozen (SIGSTOP) until the broker has handed the message to B
        # (RedisBroker requeues a silent worker's messages after its 3 s heartbeat timeout)
        os.kill(frozen, signal.SIGSTOP)
        try:
            b.start()

            def handled_by_b() -> bool:
                ran = count(redis_client, "held:started") == 2 and count(redis_client, "held:done") == 1
                return ran or message_id in redis_dead_letters(on_a)

            eventually(handled_by_b, 40, "B to run or dead-letter the message")
        finally:
            # Then, thawed, A finishes the message too
            os.kill(frozen, signal.SIGCONT)
        eventually(lambda: count(redis_client, "held:done") == 2, 20, "A to finish the message")

        # And neither delivery counted a crash: nothing dead-lettered, no record left behind
        assert crashes(redis_client, on_a) == [], b.log()
        assert redis_dead_letters(on_a) == {}
        assert count(redis_client, "held:pid:2") != frozen
        eventually(lambda: in_flight_records(redis_client, on_a) == [], 10, "the records to clear")
        assert a.terminate() == 0
        assert b.terminate() == 0
    finally:
        a.terminate()
        b.terminate()
