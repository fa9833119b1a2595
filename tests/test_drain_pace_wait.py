"""The paced drainer's wait (``drain/paced_wait.py``): sized by how fast the fleet emptied what
the last claim left, on a real Redis, with the drainer's clock in the test's hands.

At a burst's start the budget is its floor (no consumption rate yet) and then trails the
workers, which emptied the broker well within the fixed wait (half the target) and sat idle
until the next refill (``bench_smoothing.py``: about 450 fewer starts than without the
mollifier in the burst's first 750 ms).
"""

from __future__ import annotations

import itertools

import pytest
import redis

from dramatiq_mollifier.drain import paced_wait
from dramatiq_mollifier.drain.pace import MIN_OUTSTANDING, DrainPace
from dramatiq_mollifier.drain.paced_wait import MIN_PACED_WAIT_MS

pytestmark = pytest.mark.redis

TARGET_WAIT_MS = 50
LONGEST_WAIT_MS = TARGET_WAIT_MS // 2


class Clock:
    """Stands in for the ``time`` module in ``drain/paced_wait.py``."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(paced_wait, "time", clock)
    return clock


class Drainer:
    """Claims and writes what the budget grants; workers start messages when told to."""

    def __init__(self, pace: DrainPace, clock: Clock) -> None:
        self.pace = pace
        self.clock = clock
        self.in_broker: list[str] = []
        self._ids = itertools.count()

    def refill(self, backlog: int = 1_000) -> int:
        """Claim, and write as many messages as the claim and the ``backlog`` allow."""
        claim = self.pace.claim(1_000)
        ids = [f"m{next(self._ids)}" for _ in range(min(claim.granted, backlog))]
        self.pace.bind(claim, ids)
        self.pace.landed(ids)
        self.in_broker += ids
        return claim.granted

    def wait_then_start(self, count: int) -> None:
        """The paced wait passes, and workers start ``count`` of the messages in the broker."""
        self.clock.advance(self.pace.paced_wait_ms)
        started, self.in_broker = self.in_broker[:count], self.in_broker[count:]
        self.pace.release(started)


@pytest.fixture
def drainer(redis_client: redis.Redis, key_prefix: str, clock: Clock) -> Drainer:
    pace = DrainPace(
        redis_client, key_prefix=key_prefix, max_outstanding=1_000, target_wait_ms=TARGET_WAIT_MS
    )
    return Drainer(pace, clock)


def test_a_fleet_that_empties_the_broker_within_the_wait_is_refilled_sooner(drainer: Drainer) -> None:
    # Given a burst's first claim: the budget's floor, and the wait half the target
    assert drainer.refill() == MIN_OUTSTANDING
    assert drainer.pace.paced_wait_ms == LONGEST_WAIT_MS

    # When the workers start everything the broker holds before each refill
    waits = []
    for _ in range(4):
        drainer.wait_then_start(len(drainer.in_broker))
        drainer.refill()
        waits.append(drainer.pace.paced_wait_ms)

    # Then each refill comes after half the wait before it, down to the shortest wait
    assert waits == [12, 6, MIN_PACED_WAIT_MS, MIN_PACED_WAIT_MS]


def test_the_wait_grows_back_once_the_broker_keeps_half_of_what_it_got(drainer: Drainer) -> None:
    # Given a drainer whose workers emptied the broker twice (the wait is a quarter of its longest)
    emptied_twice(drainer)

    # When the workers start a quarter of what the broker holds within each wait
    waits = []
    for _ in range(3):
        drainer.wait_then_start(len(drainer.in_broker) // 4)
        drainer.refill()
        waits.append(drainer.pace.paced_wait_ms)

    # Then the wait doubles back, and never past half the target
    assert waits == [12, 24, LONGEST_WAIT_MS]


def test_a_wait_that_saw_between_half_and_three_quarters_consumed_stays(drainer: Drainer) -> None:
    drainer.refill()
    drainer.wait_then_start(len(drainer.in_broker))
    drainer.refill()
    assert drainer.pace.paced_wait_ms == 12

    drainer.wait_then_start(len(drainer.in_broker) * 5 // 8)
    drainer.refill()

    assert drainer.pace.paced_wait_ms == 12


def test_claims_a_moment_apart_say_nothing_of_the_workers_pace(drainer: Drainer, clock: Clock) -> None:
    # Given a first claim, then the workers start all of it at once
    drainer.refill()
    drainer.pace.release(drainer.in_broker)
    drainer.in_broker = []

    # When the drainer claims again 1 ms later (another org's visit in the same tick)
    clock.advance(1)
    drainer.refill()

    # Then the wait is unchanged
    assert drainer.pace.paced_wait_ms == LONGEST_WAIT_MS


def test_a_fixed_budget_waits_the_shortest_wait(
    redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=50)
    drainer = Drainer(pace, clock)
    drainer.refill()
    drainer.wait_then_start(len(drainer.in_broker))
    drainer.refill()

    assert pace.paced_wait_ms == MIN_PACED_WAIT_MS


def emptied_twice(drainer: Drainer) -> None:
    drainer.refill()
    for _ in range(2):
        drainer.wait_then_start(len(drainer.in_broker))
        drainer.refill()
    assert drainer.pace.paced_wait_ms == 6


def test_a_claim_the_rate_cap_cut_short_says_nothing_of_the_workers_pace(
    redis_client: redis.Redis, key_prefix: str, clock: Clock
) -> None:
    # Given a fleet-wide cap of 5 drained messages a second: each claim gets a token or few
    pace = DrainPace(
        redis_client,
        key_prefix=key_prefix,
        max_outstanding=1_000,
        target_wait_ms=TARGET_WAIT_MS,
        rate_per_s=5,
    )
    drainer = Drainer(pace, clock)
    assert 0 < drainer.refill() < MIN_OUTSTANDING

    # When the workers start all of it within each wait
    for _ in range(3):
        drainer.wait_then_start(len(drainer.in_broker))
        drainer.refill()

    # Then the drainer does not claim more often: the cap, not the budget, was the limit
    assert pace.paced_wait_ms == LONGEST_WAIT_MS


def test_slots_the_backlog_left_unused_are_not_counted_as_consumed(drainer: Drainer) -> None:
    # Given claims of the whole budget that an env of 5 entries fills with 5 (the rest freed)
    drainer.refill(backlog=5)
    drainer.wait_then_start(5)
    drainer.refill(backlog=5)

    # Then the wait is unchanged: the backlog, not the budget, was the limit
    assert drainer.pace.paced_wait_ms == LONGEST_WAIT_MS


def test_a_claim_after_an_idle_spell_measures_nothing(drainer: Drainer, clock: Clock) -> None:
    # Given a claim, then a second of nothing (the drainer idle), then the workers start it all
    drainer.refill()
    clock.advance(1_000)
    drainer.pace.release(drainer.in_broker)
    drainer.in_broker = []

    # When it claims again
    drainer.refill()

    # Then the wait is unchanged: what the first claim left is stale
    assert drainer.pace.paced_wait_ms == LONGEST_WAIT_MS


def test_a_failed_claim_goes_back_to_the_longest_wait(
    drainer: Drainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    emptied_twice(drainer)

    def fail(*args: object, **kwargs: object) -> None:
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(drainer.pace, "_run", fail)
    assert drainer.pace.try_claim(10) is None

    assert drainer.pace.paced_wait_ms == LONGEST_WAIT_MS
