"""End to end: the real ``dramatiq`` command drains the buffer onto a real RedisBroker.

The worker runs ``tests.apps.drain_app`` in a process group of its own; this test process is the
producer. The actor appends each message id it processes to a Redis list, so exactly-once and
at-least-once are counted, not assumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.models import EntryStatus

from .mollifier_helpers import eventually, leased_ids

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
DRAMATIQ = str(Path(sys.executable).with_name("dramatiq"))
# Dramatiq's gevent launcher: the drainer's threads and locks become greenlets once it patches.
DRAMATIQ_GEVENT = str(Path(sys.executable).with_name("dramatiq-gevent"))
# As in tests/apps/drain_app.py (which cannot be imported here: it reads its environment).
QUEUE_NAME = "e2e"
PROCESSED_KEY = "e2e:processed"


class Worker:
    """``dramatiq tests.apps.drain_app`` in its own process group, its output in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str, command: str = DRAMATIQ) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [command, "tests.apps.drain_app", "--processes", "1", "--threads", "2", *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def terminate(self) -> None:
        # To the main process only: it forwards SIGTERM to its workers, and a second SIGTERM
        # (from signalling the whole group) would make them exit at once.
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout=timeout_s)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
            self.process.wait()


@pytest.fixture
def environment(redis_url: str, broker_url: str, key_prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "E2E_REDIS_URL": broker_url,
        "MOLLIFIER_ENABLED": "true",
        "MOLLIFIER_ENABLED_ORGS": "*",
        "MOLLIFIER_REDIS_URL": redis_url,
        "MOLLIFIER_KEY_PREFIX": key_prefix,
        "MOLLIFIER_DRAIN_POLL_INTERVAL_MS": "50",
        "MOLLIFIER_DRAIN_SHUTDOWN_TIMEOUT_MS": "3000",
    }


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(env: dict[str, str], *args: str, command: str = DRAMATIQ) -> Worker:
        worker = Worker(env, tmp_path / f"worker-{len(started)}.log", *args, command=command)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
        print(f"--- {worker.log.name}\n{worker.output()[-3000:]}")


def processed(client: redis.Redis) -> list[str]:
    return [raw.decode() for raw in client.lrange(PROCESSED_KEY, 0, -1)]


def seed(buffer: MollifierBuffer, count: int) -> list[str]:
    """Buffer ``count`` encoded messages for the app's actor over three orgs, as diverts would."""
    ids = []
    for n in range(count):
        org, env = f"org{n % 3}", f"env{n % 2}"
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=QUEUE_NAME,
            actor_name="record",
            args=(n,),
            kwargs={},
            options={"org_id": org, "env_id": env},
        )
        assert buffer.accept(message.message_id, org_id=org, env_id=env, payload=message.encode())
        ids.append(message.message_id)
    return ids


def settled(client: redis.Redis, buffer: MollifierBuffer) -> bool:
    """Nothing buffered, leased, queued, delayed or in flight: no duplicate can still show up."""
    in_broker = client.hlen(f"dramatiq:{QUEUE_NAME}.msgs") + client.hlen(f"dramatiq:{QUEUE_NAME}.DQ.msgs")
    return buffer.depth() == 0 and not leased_ids(buffer) and in_broker == 0


def draining(buffer: MollifierBuffer, ids: list[str]) -> list[str]:
    """Ids with a lease or in DRAINING status."""
    leased = leased_ids(buffer)
    entries = [buffer.get(message_id) for message_id in ids]
    return sorted(leased | {e.message_id for e in entries if e and e.status is EntryStatus.DRAINING})


@pytest.mark.parametrize("command", [DRAMATIQ, DRAMATIQ_GEVENT], ids=["threads", "gevent"])
def test_a_diverted_burst_is_drained_and_processed_exactly_once(
    command: str,
    *,  # fixtures by name
    environment: dict[str, str],
    workers: Callable[..., Worker],
    redis_client: redis.Redis,
    broker_client: redis.Redis,
    redis_url: str,
    broker_url: str,
    key_prefix: str,
) -> None:
    settings = MollifierSettings(
        enabled=True, enabled_orgs={"*"}, redis_url=redis_url, key_prefix=key_prefix, trip_threshold=50
    )
    producer = RedisBroker(url=broker_url)
    mollifier = Mollifier(settings, client=redis_client)
    producer.add_middleware(mollifier)
    record = dramatiq.actor(lambda n: None, actor_name="record", queue_name=QUEUE_NAME, broker=producer)

    sent = [record.send_with_options(args=(n,), org_id="acme", env_id="prod").message_id for n in range(500)]
    diverted = mollifier.buffer.depth()
    print(f"diverted {diverted} of {len(sent)}")
    assert diverted >= 300

    worker = workers(environment, command=command)
    eventually(lambda: broker_client.llen(PROCESSED_KEY) >= len(sent), 25, "every message to be processed")
    eventually(lambda: settled(broker_client, mollifier.buffer), 15, "a duplicate, if any, to show up")
    worker.terminate()
    assert worker.wait(15) == 0

    counts = Counter(processed(broker_client))
    assert sorted(counts) == sorted(sent)
    assert [mid for mid, n in counts.items() if n > 1] == []
    assert mollifier.buffer.depth() == 0
    assert "mollifier.drainer started" in worker.output()
    producer.close()


def test_sigterm_while_draining_exits_in_time_leaving_nothing_draining_or_lost(
    environment: dict[str, str],
    workers: Callable[..., Worker],
    buffer: MollifierBuffer,
    broker_client: redis.Redis,
) -> None:
    ids = seed(buffer, 200)
    # A slow broker: each re-enqueue takes 100 ms, four at a time, so draining takes ~5 s.
    slow = {**environment, "E2E_REDELIVERY_SLEEP_MS": "100", "MOLLIFIER_DRAIN_CONCURRENCY": "4"}
    worker = workers(slow)
    eventually(lambda: broker_client.llen(PROCESSED_KEY) >= 10, 15, "draining to start")

    began = time.monotonic()
    worker.terminate()
    assert worker.wait(15) == 0
    elapsed = time.monotonic() - began
    # Dramatiq notices the signal within a second, then the drainer has 3 s at most.
    assert elapsed < 1 + 3 + 2, elapsed
    assert "mollifier.drainer stopped" in worker.output()
    assert draining(buffer, ids) == []
    left = buffer.depth()
    print(f"stopped after {elapsed:.2f} s with {left} of {len(ids)} still buffered")
    assert 0 < left < len(ids)

    # Nothing lost: a fresh worker finishes the job, and a clean stop made no duplicate.
    worker = workers(environment)
    eventually(lambda: broker_client.llen(PROCESSED_KEY) >= len(ids), 20, "the rest to be processed")
    eventually(lambda: settled(broker_client, buffer), 15, "a duplicate, if any, to show up")
    worker.terminate()
    assert worker.wait(15) == 0
    counts = Counter(processed(broker_client))
    assert sorted(counts) == sorted(ids)
    assert [mid for mid, n in counts.items() if n > 1] == []


def test_sigkill_mid_drain_then_restart_processes_every_message_at_least_once(
    environment: dict[str, str],
    workers: Callable[..., Worker],
    buffer: MollifierBuffer,
    broker_client: redis.Redis,
) -> None:
    ids = seed(buffer, 200)
    leased = {**environment, "MOLLIFIER_DRAIN_LEASE_MS": "1500"}
    # No pace: a drainer waiting for budget holds nothing DRAINING, and the kill must find some.
    slow = {
        **leased,
        "E2E_REDELIVERY_SLEEP_MS": "100",
        "MOLLIFIER_DRAIN_CONCURRENCY": "4",
        "MOLLIFIER_DRAIN_MAX_OUTSTANDING": "0",
    }
    worker = workers(slow)
    eventually(lambda: broker_client.llen(PROCESSED_KEY) >= 20, 15, "draining to start")

    worker.kill()
    worker.wait(5)
    in_doubt = draining(buffer, ids)
    print(f"killed with {len(in_doubt)} entries DRAINING and {buffer.depth()} buffered")
    assert in_doubt  # the kill left leased entries behind for the restart to reclaim

    worker = workers(leased)
    eventually(lambda: set(processed(broker_client)) >= set(ids), 25, "every message to be processed")
    worker.terminate()
    assert worker.wait(15) == 0

    counts = Counter(processed(broker_client))
    duplicates = {mid: n for mid, n in counts.items() if n > 1}
    print(f"processed {len(counts)} messages, {sum(counts.values())} times; duplicates: {duplicates}")
    assert set(counts) == set(ids)
    assert buffer.depth() == 0
    assert draining(buffer, ids) == []


def test_a_misconfigured_drain_shutdown_timeout_fails_the_worker_at_boot(
    environment: dict[str, str], workers: Callable[..., Worker]
) -> None:
    bad = {**environment, "MOLLIFIER_DRAIN_SHUTDOWN_TIMEOUT_MS": "700000"}
    worker = workers(bad)

    code = worker.wait(30)

    assert code != 0
    assert "drain_shutdown_timeout_ms" in worker.output()
    assert "MollifierConfigurationError" in worker.output()
