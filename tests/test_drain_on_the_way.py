"""The budget counts drained messages in the broker; messages on their way count only for their
own drainer (and against twice the budget in all), or for every drainer when the caller moves in
Redis, on a real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.pace import DrainPace
from dramatiq_mollifier.models import BufferEntry

from .layout_helpers import key_space
from .mollifier_helpers import eventually

pytestmark = pytest.mark.redis


def pace_of(client: redis.Redis, key_prefix: str, budget: int) -> DrainPace:
    return DrainPace(client, key_prefix=key_prefix, max_outstanding=budget)


def test_another_drainers_messages_on_their_way_do_not_use_the_budget(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a drainer holding 8 popped messages of a budget of 10, not written yet
    first, second = pace_of(redis_client, key_prefix, 10), pace_of(redis_client, key_prefix, 10)
    held = first.claim(8)
    first.bind(held, [f"a-{i}" for i in range(8)])

    # Then the first drainer counts its own 8 on their way
    assert first.claim(10, own=8).granted == 2

    # But another drainer may still fill the broker up to the budget: the queue is not left
    # empty while the first one's handlers hold most of it
    other = second.claim(10)
    assert (other.granted, other.in_use, other.on_the_way) == (10, 0, 10)


def test_a_drainer_that_moves_in_redis_counts_every_drainers_messages_on_their_way(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a drainer holding 8 slots of a budget of 10 on their way (claimed, not yet moved)
    first, second = pace_of(redis_client, key_prefix, 10), pace_of(redis_client, key_prefix, 10)
    held = first.claim(8, moves=True)
    assert held.granted == 8

    # Then a second drainer that moves in Redis gets only the 2 left: two such drainers claiming
    # at once would otherwise put twice the budget in the broker
    other = second.claim(10, moves=True)
    assert (other.granted, other.in_use, other.on_the_way) == (2, 0, 8)

    # And once both drainers' messages are in the broker, the budget is full, not overfull
    ids = [f"a-{i}" for i in range(8)] + ["b-0", "b-1"]
    first.bind(held, ids[:8])
    second.bind(other, ids[8:])
    first.landed(ids)
    assert second.claim(10, moves=True).granted == 0
    first.release(ids[:3])
    assert second.claim(10, moves=True).granted == 3


def test_a_movers_claim_that_is_never_spent_holds_the_budget_for_a_second_at_most(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given slots that live 10 s, and two claims never spent (their drainer died before moving)
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=10, outstanding_ttl_ms=10_000)
    pace.claim(4, moves=True)
    pace.claim(4)

    # Then the mover's placeholders are due within a second, every mover counting them; the
    # handler path's keep the slot lifetime (its writes may take that long)
    seconds, micros = redis_client.time()
    now_ms = seconds * 1000 + micros // 1000
    members = redis_client.zrange(pace.keys[1], 0, -1, withscores=True)
    deadlines = sorted(score - now_ms for _, score in members)
    assert all(0 < d <= 1_000 for d in deadlines[:4]) and all(9_000 < d <= 10_000 for d in deadlines[4:])


def test_written_messages_count_against_the_budget(redis_client: redis.Redis, key_prefix: str) -> None:
    pace = pace_of(redis_client, key_prefix, 10)
    claim = pace.claim(6)
    ids = [f"m-{i}" for i in range(6)]
    pace.bind(claim, ids)

    pace.landed(ids[:4], given_back=ids[4:])

    # 4 in the broker, 2 given back: 6 free
    assert pace.in_use() == 4
    again = pace.claim(10)
    assert (again.granted, again.in_use, again.on_the_way) == (6, 4, 0)


def test_everything_on_its_way_is_bounded_by_a_second_budget(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given three drainers, each holding popped messages not yet written
    pace = pace_of(redis_client, key_prefix, 10)
    for tag in ("a", "b"):
        claim = pace.claim(10)
        assert claim.granted == 10
        pace.bind(claim, [f"{tag}-{i}" for i in range(10)])

    # Then a third gets nothing: 20 on their way is twice the budget
    assert pace.claim(10).granted == 0


def test_a_worker_may_start_a_message_before_its_drainer_reports_it_written(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    pace = pace_of(redis_client, key_prefix, 10)
    claim = pace.claim(3)
    pace.bind(claim, ["x", "y", "z"])

    pace.release(["x"])  # started at once
    pace.landed(["x", "y", "z"])  # the report comes later: x is not counted again

    assert pace.in_use() == 2
    assert sorted(redis_client.zrange(key_space(redis_client, key_prefix).outstanding, 0, -1)) == [b"y", b"z"]


class Gate:
    """A handler that holds every broker write until released."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()

    def __call__(self, entry: BufferEntry) -> None:
        with self._lock:
            self.waiting += 1
        self.open.wait(10)


def test_two_drainers_keep_the_broker_fed_while_one_is_slow_to_write(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given 100 buffered messages and a budget of 16
    for i in range(100):
        buffer.accept(f"m-{i}", org_id="burst", env_id="prod", payload=b"x")
    slow = Gate()
    written: list[str] = []
    lock = threading.Lock()

    def fast(entry: BufferEntry) -> None:
        with lock:
            written.append(entry.message_id)

    drainers = [
        MollifierDrainer(buffer, handler, batch_size=16, pace=pace_of(redis_client, key_prefix, 16))
        for handler in (slow, fast)
    ]
    # When the first drainer's handlers hold 16 messages on their way (its writes are slow)
    holder = threading.Thread(target=drainers[0].run_once, daemon=True)
    holder.start()
    on_the_way = f"{key_space(redis_client, key_prefix).outstanding}:on-the-way"
    eventually(
        lambda: slow.waiting >= 1 and redis_client.zcard(on_the_way) == 16,
        what="the slow drainer to hold 16 messages",
    )

    # Then the second still puts a whole budget in the broker
    drainers[1].run_once()
    assert len(written) == 16

    slow.open.set()
    holder.join(10)
    # And once the first one's writes land, the broker holds them too: 32, the budget plus what
    # the other drainer was writing, never more
    assert DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=16).in_use() == 32


@pytest.mark.parametrize(("target_wait_ms", "expected_ms"), [(100, 50), (400, 200), (0, 5), (8, 5)])
def test_a_paced_drainer_waits_half_the_target_wait_before_it_claims_again(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str, target_wait_ms: int, expected_ms: int
) -> None:
    # Given more buffered messages than the budget, and workers that never start any
    for i in range(60):
        buffer.accept(f"m-{i}", org_id="burst", env_id="prod", payload=b"x")
    waits: list[int] = []
    lock = threading.Lock()

    def sleep(delay_ms: int) -> None:
        with lock:
            waits.append(delay_ms)
        time.sleep(0.002)  # observe the waits, do not serve them

    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=20, target_wait_ms=target_wait_ms)
    drainer = MollifierDrainer(buffer, lambda entry: None, pace=pace, sleep=sleep, poll_interval_ms=1_000)
    drainer.start()
    try:
        # Then once the budget is used up, each wait is about half the budget's worth of the
        # fleet's work (a claim per half of the budget), not a poll every few ms
        eventually(lambda: len(waits) >= 3, what="paced waits")
        with lock:
            observed = list(waits)  # before the stop, whose last tick may wait otherwise
    finally:
        assert drainer.stop(5_000)
    assert set(observed) == {expected_ms}
