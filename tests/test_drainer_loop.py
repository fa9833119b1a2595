"""The background loop: the concurrency cap, bounded stop, sleeps that stop wakes, backoff."""

from __future__ import annotations

import threading
import time

import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.drain.drainer import MAX_BACKOFF_MS, MollifierDrainer, backoff_ms
from dramatiq_mollifier.embedded import EmbeddedRedis
from dramatiq_mollifier.models import BufferEntry, EntryStatus

from .layout_helpers import orgs_of_one_group
from .mollifier_helpers import drainer_threads, eventually


def seed(buffer: MollifierBuffer, count: int, *, orgs: int = 1, envs: int = 1) -> str:
    """Accept ``count`` entries over orgs of one slot group; the key of that group's leases.

    One group, so every lease is in one key, read at one instant (read group by group, on a
    cluster, it could count an entry leased after another group's acked ones: more in flight
    than there ever were at once).
    """
    names = orgs_of_one_group(buffer, orgs, "org")
    for i in range(count):
        buffer.accept(f"m{i}", org_id=names[i % orgs], env_id=f"env{i % envs}", payload=b"x")
    return buffer.keys.group_of(names[0]).leases


def draining(buffer: MollifierBuffer, leases: str) -> int:
    """Entries popped but not settled, as the buffer sees it: every DRAINING entry holds a lease.

    One read of the seeded group's leases, not one per group: a handler that read all 16 groups
    of a cluster layout would spend milliseconds of CPU in the cluster client, and the drainer's
    adaptive parallelism would rightly run fewer such handlers at once.
    """
    return int(buffer.client.zcard(leases))


def test_entries_in_flight_never_exceed_the_concurrency_cap(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # Handlers that sleep leave the CPU idle, so the drainer soon runs as many as it may at once.
    leases = seed(buffer, 600, orgs=5, envs=3)
    lock = threading.Lock()
    running = 0
    peak_running = 0
    peak_draining = 0

    def handler(entry: BufferEntry) -> None:
        nonlocal running, peak_running, peak_draining
        with lock:
            running += 1
            peak_running = max(peak_running, running)
        in_flight = draining(buffer, leases)
        time.sleep(0.01)  # the handler's work: it sleeps, leaving the CPU idle
        with lock:
            peak_draining = max(peak_draining, in_flight)
            running -= 1

    drainer = MollifierDrainer(buffer, handler, concurrency=7, batch_size=50)
    while drainer.run_once().drained:
        pass

    assert buffer.depth() == 0
    assert peak_running == 7
    assert peak_draining <= 7


def test_max_in_flight_sizes_the_refills_and_the_pool_stays_at_its_concurrency(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # Handlers that sleep: popped entries wait for one of 4 threads, at most 24 popped at once
    leases = seed(buffer, 200)
    lock = threading.Lock()
    running = peak_running = peak_draining = 0

    def handler(entry: BufferEntry) -> None:
        nonlocal running, peak_running, peak_draining
        with lock:
            running += 1
            peak_running = max(peak_running, running)
        in_flight = draining(buffer, leases)
        time.sleep(0.005)
        with lock:
            peak_draining = max(peak_draining, in_flight)
            running -= 1

    drainer = MollifierDrainer(buffer, handler, concurrency=4, max_in_flight=24, batch_size=100)
    while drainer.run_once().drained:
        pass

    assert buffer.depth() == 0
    assert peak_running <= 4
    # Refills of 12 on top of what is still in flight: more popped than threads, never over 24
    assert 4 < peak_draining <= 24


def test_stop_lets_in_flight_handlers_finish_and_leaves_nothing_draining(buffer: MollifierBuffer) -> None:
    seed(buffer, 200)
    started = threading.Event()

    def handler(entry: BufferEntry) -> None:
        started.set()
        time.sleep(0.05)  # the handler's work: stop finds handlers in flight

    drainer = MollifierDrainer(buffer, handler, concurrency=10, batch_size=200)
    drainer.start()
    assert started.wait(5)

    assert drainer.stop(5_000)

    assert 0 < buffer.depth() < 200
    entries = [buffer.get(f"m{i}") for i in range(200)]
    left = [e for e in entries if e is not None]
    # Popped entries whose handler had not started went back untried.
    assert all(e.status is EntryStatus.QUEUED and e.attempts == 0 for e in left)


def test_stop_is_bounded_while_a_handler_hangs(buffer: MollifierBuffer) -> None:
    seed(buffer, 1)
    entered, release = threading.Event(), threading.Event()

    def handler(entry: BufferEntry) -> None:
        entered.set()
        release.wait(30)

    before = drainer_threads()
    drainer = MollifierDrainer(buffer, handler)
    drainer.start()
    assert entered.wait(5)

    began = time.monotonic()
    assert drainer.stop(300) is False
    assert time.monotonic() - began < 3.0  # not the handler's 30 s

    # The hung entry keeps its lease; when its handler does return, it is still acked.
    entry = buffer.get("m0")
    assert entry is not None
    assert entry.status is EntryStatus.DRAINING
    release.set()
    eventually(lambda: buffer.get("m0") is None)
    eventually(lambda: drainer_threads() <= before)


def test_stop_wakes_a_long_sleep_at_once(buffer: MollifierBuffer) -> None:
    sleeping = threading.Event()

    def sleep(delay_ms: int) -> None:
        sleeping.set()
        drainer._wait(delay_ms)  # the real wait on the stop event, seen entering

    # Polling (no block on the wake-up list) so the idle wait is a sleep.
    drainer = MollifierDrainer(
        buffer, lambda entry: None, poll_interval_ms=60_000, sleep=sleep, idle_wait_ms=0
    )
    drainer.start()
    assert sleeping.wait(5)  # an idle tick, then a one-minute sleep

    began = time.monotonic()
    assert drainer.stop(5_000)
    assert time.monotonic() - began < 3.0  # not the minute's sleep
    assert not drainer.running


def test_start_twice_runs_one_loop(buffer: MollifierBuffer) -> None:
    before = drainer_threads()
    drainer = MollifierDrainer(buffer, lambda entry: None)
    drainer.start()
    drainer.start()
    try:
        assert len(drainer_threads() - before) == 1
    finally:
        assert drainer.stop(5_000)
    assert drainer_threads() <= before


def test_stop_when_never_started_returns_true_at_once(buffer: MollifierBuffer) -> None:
    drainer = MollifierDrainer(buffer, lambda entry: None)

    began = time.monotonic()
    assert drainer.stop(10_000) is True
    assert time.monotonic() - began < 2.0  # not the 10 s timeout


def test_a_stopped_drainer_can_start_again(buffer: MollifierBuffer) -> None:
    seen: list[str] = []
    drainer = MollifierDrainer(buffer, lambda entry: seen.append(entry.message_id), poll_interval_ms=10)
    drainer.start()
    assert drainer.stop(5_000)
    seed(buffer, 3)

    drainer.start()
    eventually(lambda: len(seen) == 3)
    assert drainer.stop(5_000)


def test_backoff_doubles_from_the_poll_interval_up_to_five_seconds() -> None:
    assert [backoff_ms(100, n) for n in range(1, 8)] == [100, 200, 400, 800, 1600, 3200, 5000]
    assert backoff_ms(100, 10_000) == MAX_BACKOFF_MS


def test_backoff_grows_while_ticks_raise_and_resets_on_success(disposable_redis: EmbeddedRedis) -> None:
    buffer = MollifierBuffer.from_url(disposable_redis.url, key_prefix="backoff")
    waits: list[int] = []
    lock = threading.Lock()

    def sleep(delay_ms: int) -> None:
        with lock:
            waits.append(delay_ms)
        time.sleep(0.002)  # observe the waits, do not serve them

    drainer = MollifierDrainer(buffer, lambda entry: None, poll_interval_ms=10, sleep=sleep)
    disposable_redis.stop()
    drainer.start()
    try:
        eventually(lambda: waits.count(MAX_BACKOFF_MS) >= 2)
        with lock:
            failing = list(waits)
        assert failing[:6] == [10, 20, 40, 80, 160, 320]
        assert max(failing) == MAX_BACKOFF_MS

        disposable_redis.start()
        eventually(lambda: waits[-3:] == [10, 10, 10])
    finally:
        assert drainer.stop(5_000)
        buffer.client.close()


def test_a_tick_that_raises_does_not_spin(disposable_redis: EmbeddedRedis) -> None:
    buffer = MollifierBuffer.from_url(disposable_redis.url, key_prefix="spin")
    disposable_redis.stop()
    ticks = 0
    real_sleep = threading.Event()

    def sleep(delay_ms: int) -> None:
        nonlocal ticks
        ticks += 1
        real_sleep.wait(delay_ms / 1000)

    drainer = MollifierDrainer(buffer, lambda entry: None, poll_interval_ms=20, sleep=sleep)
    drainer.start()
    time.sleep(1.0)  # the second whose ticks are counted: the passing time is what is measured
    real_sleep.set()
    assert drainer.stop(5_000)
    buffer.client.close()

    # 20 + 40 + 80 + 160 + 320 ms of backoff fill the second: about six ticks, not thousands.
    assert 3 <= ticks <= 8


def test_a_tick_whose_entries_all_fail_does_not_spin(buffer: MollifierBuffer) -> None:
    seed(buffer, 1)
    calls = 0

    def handler(entry: BufferEntry) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("always")

    drainer = MollifierDrainer(buffer, handler, max_attempts=1_000, poll_interval_ms=50, retry_delay_ms=50)
    drainer.start()
    time.sleep(0.5)  # the half second whose attempts are counted: the passing time is measured
    assert drainer.stop(5_000)

    # Each retry waits its own delay, 50 ms doubling: attempts at about 0, 50, 150 and 350 ms.
    assert 2 <= calls <= 5
