"""``examples/``: the producer's burst is buffered, and a real worker processes every event once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from dramatiq_mollifier import MollifierBuffer

from .mollifier_helpers import eventually, leased_ids, stop_process

ROOT = Path(__file__).resolve().parent.parent
BURST = 800
STEADY = 10


def python(*argv: str, urls: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**os.environ, **urls},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def counts(client: redis.Redis, key: str) -> dict[str, int]:
    """A hash of counters, decoded."""
    raw: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
    return {field.decode(): int(value) for field, value in raw.items()}


def settled(client: redis.Redis, buffer_client: redis.Redis) -> bool:
    """Nothing buffered, leased, queued, delayed or in flight: no duplicate can still show up."""
    buffer = MollifierBuffer(buffer_client)  # the example's default key prefix
    queues = ("events", "events.DQ", "billing", "billing.DQ")
    in_broker = sum(client.hlen(f"dramatiq:{queue}.msgs") for queue in queues)
    return buffer.depth() == 0 and not leased_ids(buffer) and in_broker == 0


@pytest.mark.e2e
def test_the_example_burst_is_buffered_then_processed_exactly_once(
    redis_url: str, broker_url: str, redis_client: redis.Redis, broker_client: redis.Redis, tmp_path: Path
) -> None:
    # The example's broker (and its stand-in database) on broker_url, its buffer on redis_url
    urls = {"REDIS_URL": broker_url, "BUFFER_REDIS_URL": redis_url}
    # Given no worker yet: the producer's burst trips acme/prod, which is diverted to the buffer.
    produced = python("-m", "examples.producer", "--burst", str(BURST), "--steady", str(STEADY), urls=urls)
    assert produced.returncode == 0, produced.stderr
    assert f"acme/prod sent {BURST} events" in produced.stdout
    stats = python("-m", "dramatiq_mollifier", "stats", "--json", "--redis-url", redis_url, urls=urls)
    buffered = json.loads(stats.stdout)["depth"]
    assert 0 < buffered < BURST

    # When a worker runs the example app (its drainer starts with it).
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "examples.app", "--processes", "1", "--threads", "4"],
        cwd=ROOT,
        env={**os.environ, **urls},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    expected = {f"acme/prod/{i}" for i in range(BURST)}
    expected |= {f"{org}/{i}" for org in ("globex/prod", "initech/eu") for i in range(STEADY)}
    try:
        eventually(lambda: broker_client.hlen("example:events") >= len(expected), 60, "every event")
        eventually(lambda: settled(broker_client, redis_client), 15, "a duplicate, if any, to show up")
    finally:
        stop_process(worker)
        log.close()

    # Then every event was stored exactly once, the buffer is empty and billing went through.
    stored = counts(broker_client, "example:events")
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    assert set(stored) == expected, worker_log
    assert set(stored.values()) == {1}
    receipts = counts(broker_client, "example:receipts")
    assert receipts == {"acme": BURST, "globex": STEADY, "initech": STEADY}
    stats = python("-m", "dramatiq_mollifier", "stats", "--json", "--redis-url", redis_url, urls=urls)
    assert json.loads(stats.stdout)["depth"] == 0
