"""An idle drainer costs about one Redis command per second, and still starts a burst at once.

Each test runs on a server of its own, so ``INFO commandstats`` and ``blocked_clients`` see the
drainers under test and nothing else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.connections import drain_client
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.housekeeping import IDLE_GAUGES_MS, Housekeeping
from dramatiq_mollifier.drain.idle import IdleWait
from dramatiq_mollifier.embedded import EmbeddedRedis
from dramatiq_mollifier.models import BufferEntry
from dramatiq_mollifier.telemetry import Telemetry

from .mollifier_helpers import eventually

#: How long the idle drainer's Redis commands are counted, in seconds.
MEASURE_S = 10
#: Commands that are the test's own (reading and resetting the statistics).
OWN_COMMANDS = {"cmdstat_info", "cmdstat_config", "cmdstat_config|resetstat"}


@pytest.fixture
def admin(disposable_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(disposable_redis.url)
    yield client
    client.close()


@pytest.fixture
def drain_buffer(disposable_redis: EmbeddedRedis) -> Iterator[MollifierBuffer]:
    """A buffer on the drainer's own kind of client (10 s socket timeout, no retries)."""
    client = drain_client(redis.Redis.from_url(disposable_redis.url, protocol=3), socket_timeout_ms=10_000)
    yield MollifierBuffer(client, key_prefix="idle")
    client.close()


def blocked(admin: redis.Redis) -> int:
    return int(admin.info("clients")["blocked_clients"])


def commands_run(admin: redis.Redis) -> dict[str, int]:
    stats = admin.info("commandstats")
    return {name: int(stat["calls"]) for name, stat in stats.items() if name not in OWN_COMMANDS}


def test_an_idle_drainer_costs_about_one_redis_command_per_second(
    admin: redis.Redis, drain_buffer: MollifierBuffer
) -> None:
    # Given a drainer with nothing to drain, blocked on the wake-up list
    drainer = MollifierDrainer(drain_buffer, lambda entry: None)
    drainer.start()
    try:
        eventually(lambda: blocked(admin) == 1, what="the drainer to block")
        admin.config_resetstat()
        # When its commands are counted over a few seconds (a measurement window, not a wait)
        time.sleep(MEASURE_S)
        run = commands_run(admin)
    finally:
        assert drainer.stop(5_000)

    # Then it made about one per second at most (polling every 100 ms made 13)
    per_second = sum(run.values()) / MEASURE_S
    print(f"idle drainer: {per_second:.2f} Redis commands/s {run}")
    assert per_second <= 1.0, run


def test_the_first_message_after_idle_starts_draining_within_the_poll_interval(
    admin: redis.Redis, drain_buffer: MollifierBuffer, disposable_redis: EmbeddedRedis
) -> None:
    handled: dict[str, float] = {}
    seen = threading.Event()

    def handler(entry: BufferEntry) -> None:
        handled[entry.message_id] = time.monotonic()
        seen.set()

    # Given a drainer blocked for up to 8 s, polling every 500 ms when not idle
    drainer = MollifierDrainer(drain_buffer, handler, poll_interval_ms=500, idle_wait_ms=8_000)
    send_side = MollifierBuffer.from_url(disposable_redis.url, key_prefix="idle")
    drainer.start()
    try:
        for message_id, accept in (
            ("plain", lambda: send_side.accept("plain", org_id="acme", env_id="prod", payload=b"x")),
            (
                "gated",
                lambda: send_side.evaluate_trip_and_accept(
                    "gated",
                    org_id="acme",
                    env_id="prod",
                    payload=b"x",
                    window_ms=1_000,
                    threshold=0,
                    hold_ms=1,
                ),
            ),
        ):
            eventually(lambda: blocked(admin) == 1, what="the drainer to block")
            seen.clear()
            # When the first message of a burst is buffered (by accept, and by the gate's script)
            sent = time.monotonic()
            accept()
            # Then it is handled at once, not at the end of the idle wait (the bound leaves a
            # loaded machine room; a drainer that slept through would miss it 3 times in 4)
            assert seen.wait(10)
            assert handled[message_id] - sent < 2.0, handled[message_id] - sent
    finally:
        assert drainer.stop(5_000)
        send_side.client.close()


def test_stop_ends_a_blocked_drainer_at_once(admin: redis.Redis, drain_buffer: MollifierBuffer) -> None:
    drainer = MollifierDrainer(drain_buffer, lambda entry: None, idle_wait_ms=8_000)
    drainer.start()
    eventually(lambda: blocked(admin) == 1, what="the drainer to block")

    started = time.monotonic()
    assert drainer.stop(5_000)

    assert time.monotonic() - started < 3.0  # not the 8 s wait
    eventually(lambda: blocked(admin) == 0, what="the block to end")


def test_a_woken_drainer_wakes_the_next_one_to_join_the_burst(
    admin: redis.Redis, drain_buffer: MollifierBuffer
) -> None:
    # Given two idle drainers, each handling an entry in 20 ms
    handled_by: dict[str, list[float]] = {"a": [], "b": []}

    def handler_for(name: str) -> Callable[[BufferEntry], None]:
        def handler(entry: BufferEntry) -> None:
            time.sleep(0.02)
            handled_by[name].append(time.monotonic())

        return handler

    drainers = [
        MollifierDrainer(drain_buffer, handler_for(name), concurrency=2, batch_size=10, idle_wait_ms=8_000)
        for name in handled_by
    ]
    for drainer in drainers:
        drainer.start()
    try:
        eventually(lambda: blocked(admin) == 2, what="both drainers to block")
        # When a burst arrives (one wake-up token: the buffer had no queued work before)
        sent = time.monotonic()
        for n in range(300):
            drain_buffer.accept(f"m{n}", org_id=f"org{n % 10}", env_id="prod", payload=b"x")
        # Then both drain it, long before the idle wait would have woken the second
        eventually(lambda: all(handled_by.values()), timeout_s=5, what="both drainers to drain")
        assert max(times[0] for times in handled_by.values()) - sent < 3.0
    finally:
        for drainer in drainers:
            assert drainer.stop(5_000)


def test_a_refused_connect_in_the_idle_wait_neither_raises_nor_ends_the_drainer(
    disposable_redis: EmbeddedRedis, drain_buffer: MollifierBuffer, redis_binary: str
) -> None:
    # Given a drainer whose wake-up list sits on a server that is down (refused connects), so
    # its ticks succeed and every idle wait fails to connect
    wake_server = EmbeddedRedis(redis_binary).start()
    wake_client = drain_client(redis.Redis.from_url(wake_server.url), socket_timeout_ms=10_000)
    assert wake_client.ping()
    wake_server.stop()
    handled = threading.Event()
    drainer = MollifierDrainer(drain_buffer, lambda entry: handled.set(), idle_wait_ms=5_000)
    drainer._idle_wait = IdleWait(wake_client, key=drain_buffer.keys.drain_wake, wait_ms=5_000)
    assert not drainer._idle_wait.wait() and drainer._idle_wait.failed  # never raises
    drainer.start()
    try:
        # When a message is buffered after a few failed waits
        eventually(lambda: drainer._idle_wait.failed, what="an idle wait to fail")
        drain_buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
        # Then the drainer is still alive and drains it
        assert handled.wait(5)
        assert drainer.running
        # And once the wake-up list's server is back, it blocks there again
        wake_server.start()
        with redis.Redis.from_url(wake_server.url) as wake_admin:
            eventually(lambda: blocked(wake_admin) == 1, what="the drainer to block")
    finally:
        assert drainer.stop(5_000)
        wake_client.close()
        wake_server.close()


def test_a_dead_letter_retried_by_an_operator_wakes_an_idle_drainer(
    admin: redis.Redis, drain_buffer: MollifierBuffer
) -> None:
    # Given a dead letter, and a drainer blocked on the wake-up list for up to 8 s
    drain_buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(drain_buffer)
    assert protocol.pop("acme", "prod") is not None
    assert protocol.fail("m1", code="Boom", message="boom", org_id="acme", env_id="prod")
    drain_buffer.client.delete(drain_buffer.keys.drain_wake)
    handled = threading.Event()
    drainer = MollifierDrainer(drain_buffer, lambda entry: handled.set(), idle_wait_ms=8_000)
    drainer.start()
    try:
        eventually(lambda: blocked(admin) == 1, what="the drainer to block")
        # When an operator retries it (``failed retry``)
        retried = time.monotonic()
        assert drain_buffer.retry_failed("m1")
        # Then the drainer wakes and drains it well within the idle wait
        assert handled.wait(10)
        assert time.monotonic() - retried < 2.0
    finally:
        assert drainer.stop(5_000)


def test_an_idle_drainer_reports_the_gauges_every_two_seconds(buffer: MollifierBuffer) -> None:
    # Idle, it reported every 15 s: the depth read 180 for 15 s after the buffer emptied.
    reports: list[float] = []
    housekeeping = Housekeeping(
        DrainProtocol(buffer), buffer, telemetry=Telemetry(), report_gauges=lambda: reports.append(0)
    )
    for tenth in range(0, 100):  # 10 s of idle loop iterations, a tenth of a second apart
        housekeeping.run(tenth / 10, idle=True)
    assert len(reports) == 5 == 10_000 // IDLE_GAUGES_MS
