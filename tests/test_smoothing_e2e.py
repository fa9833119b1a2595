"""Quiet tenants are protected where they feel it: at the worker, with the real ``dramatiq`` CLI.

One org bursts while three quiet orgs send 10/s, once without the mollifier and once with it on
its default settings (``benchmarks/smoothing_scenario.py``). The bound is loose on purpose (a
third); the tight figures belong to ``benchmarks/bench_smoothing.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from benchmarks.floor_drain import DRAINED_KEY, LIST_KEY
from benchmarks.smoothing_scenario import run_scenario
from dramatiq_mollifier.embedded import EmbeddedRedis

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

BURST = 6_000
#: The quiet p99 without the mollifier that shows the burst backed up the broker queue.
BACKED_UP_P99_MS = 1_000
#: Pairs of runs at most, for one whose baseline backed up.
ATTEMPTS = 3


def test_quiet_tenants_do_not_wait_behind_a_burst(disposable_redis: EmbeddedRedis, tmp_path: Path) -> None:
    url = disposable_redis.url
    # A burst of 6,000: without the mollifier the quiet p99 is then 3 s or more here, so one
    # scheduling stall of the loaded machine (up to a second, seen under parallel test runs) in
    # the mollified run does not decide the verdict; with 3,000 it did, now and then. A machine
    # loaded enough to slow the producer as much as the workers may not let the burst back up at
    # all (a CI run saw a baseline p99 of 383 ms): such a pair shows nothing, and runs again.
    baselines = []
    for attempt in range(ATTEMPTS):
        without = run_scenario(
            redis_url=url, mollified=False, burst=BURST, log=tmp_path / f"without{attempt}.log"
        )
        baselines.append(without.p99)
        if without.p99 >= BACKED_UP_P99_MS:
            break
    else:
        pytest.fail(f"the burst never backed up the broker queue: baseline quiet p99s {baselines} ms")
    with_ = run_scenario(redis_url=url, mollified=True, burst=BURST, log=tmp_path / "with.log")

    # Everything was processed both times, and quiet messages were measured both times
    assert without.burst_processed == with_.burst_processed == BURST
    assert len(without.quiet_waits_ms) >= 10 and len(with_.quiet_waits_ms) >= 10
    # The burst waited in the buffer, not in the broker queue (how much of it the buffer held at
    # once depends on how fast this machine lets the producer send: a share, not a count)
    assert with_.peak_buffer_depth > 5 * with_.peak_broker_depth, (
        with_.peak_buffer_depth,
        with_.peak_broker_depth,
    )
    assert with_.peak_broker_depth < without.peak_broker_depth / 3
    # And the quiet orgs' p99 wait fell to under a third of what it is without the mollifier
    assert with_.p99 < without.p99 / 3, (with_.p99, without.p99)
    # The benchmark's cost figure: the whole machine's CPU during each burst (/proc/stat), more
    # than none and no more than the machine's cores could spend in that time
    assert without.machine_cpu_s > 0 and with_.machine_cpu_s > 0, (without.machine_cpu_s, with_.machine_cpu_s)
    assert with_.machine_cpu_s <= with_.burst_completion_s * with_.cores * 1.05
    # And the workers' CPU by thread over each burst (benchmarks/thread_cpu.py): Dramatiq's actor
    # threads in both runs, the mollifier's drainer only where the mollifier is on
    assert without.thread_cpu_s.get("dramatiq actor threads", 0) > 0, without.thread_cpu_s
    assert with_.thread_cpu_s.get("dramatiq actor threads", 0) > 0, with_.thread_cpu_s
    assert with_.thread_cpu_s.get("mollifier-drainer", 0) > 0, with_.thread_cpu_s
    assert "mollifier-drainer" not in without.thread_cpu_s, without.thread_cpu_s


@pytest.mark.parametrize("broker", ["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def test_the_floor_sends_the_whole_burst_through_its_list_in_redis(
    broker: str, disposable_redis: EmbeddedRedis, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``bench_smoothing.py --floor`` compares the mollifier with the cheapest buffer in Redis: a
    floor whose burst went straight to the broker would be no floor at all."""
    url = disposable_redis.url
    broker_url = request.getfixturevalue("rabbitmq_url") if broker == "rabbitmq" else None
    floor = run_scenario(
        redis_url=url,
        mollified=False,
        floor=True,
        burst=1_000,
        broker=broker,
        broker_url=broker_url,
        log=tmp_path / "floor.log",
    )

    assert floor.burst_processed == 1_000
    # Every burst message went through the floor's list, drained by its thread in the workers
    client = redis.Redis.from_url(url)
    assert int(client.get(DRAINED_KEY) or 0) == 1_000
    assert client.llen(LIST_KEY) == 0
    with pytest.raises(ValueError, match="without the mollifier"):
        run_scenario(redis_url=url, mollified=True, floor=True)
