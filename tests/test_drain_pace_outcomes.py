"""The drain pace where its outcome was wrong: a long target wait that never learned the fleet's
rate, rate-cap tokens spent on slots that carried nothing, and an env skipped by a claim the full
budget refused. Real Redis; drainers with a fake broker (a list), workers freeing slots as the
``SlotReleaser`` does. Each test failed before its fix."""

from __future__ import annotations

import collections
import threading
from collections import Counter

import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.pace import MAX_PACED_WAIT_MS, Claim, DrainPace
from dramatiq_mollifier.models import BufferEntry

from .mollifier_helpers import eventually


class Broker:
    def __init__(self) -> None:
        self.entries: list[BufferEntry] = []
        self._lock = threading.Lock()

    def __call__(self, entry: BufferEntry) -> None:
        with self._lock:
            self.entries.append(entry)


class Fleet:
    """A broker queue whose workers start up to ``per_s`` messages a second, freeing their slots
    every 20 ms as the ``SlotReleaser`` does."""

    def __init__(self, pace: DrainPace, per_s: int) -> None:
        self.queue: collections.deque[str] = collections.deque()
        self._pace = pace
        self._per_tick = max(1, per_s // 50)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __call__(self, entry: BufferEntry) -> None:
        self.queue.append(entry.message_id)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            ids = [self.queue.popleft() for _ in range(min(self._per_tick, len(self.queue)))]
            if ids:
                self._pace.release(ids)


def seed(buffer: MollifierBuffer, org: str, env: str, count: int) -> None:
    for i in range(count):
        buffer.accept(f"{org}/{env}/{i}", org_id=org, env_id=env, payload=b"x")


def test_a_long_target_wait_still_learns_the_fleets_rate(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a fleet that starts up to 1,000 drained messages a second and a target of 1 s (the
    # paced drainer waited half of it: longer than the rate's window lives without a free)
    seed(buffer, "a", "prod", 5_000)
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=1_000, target_wait_ms=1_000)
    assert pace.paced_wait_ms == MAX_PACED_WAIT_MS
    fleet = Fleet(pace, per_s=1_000)
    budgets: list[int] = []
    claim = pace.claim

    def counted(wanted: int, *, own: int = 0, moves: bool = False) -> Claim:
        granted = claim(wanted, own=own, moves=moves)
        budgets.append(granted.budget)
        return granted

    pace.claim = counted  # type: ignore[method-assign]
    drainer = MollifierDrainer(buffer, fleet, pace=pace, concurrency=16, max_in_flight=64)
    fleet.start()
    drainer.start()
    try:
        # Then the budget grows past its floor of 20 (it stayed there: 40 messages a second)
        eventually(lambda: max(budgets, default=0) > 200, what="the budget to learn the rate")
    finally:
        drainer.stop(2_000)
        fleet.stop()


def test_the_rate_cap_is_not_spent_on_slots_the_pop_did_not_fill(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given 16 orgs with one message each and a cap of 16 a second (a full bucket of 16 tokens)
    for i in range(16):
        seed(buffer, f"org{i:02d}", "prod", 1)
    broker = Broker()
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=1_000, rate_per_s=16)
    drainer = MollifierDrainer(buffer, broker, batch_size=16, pace=pace)

    # When one tick drains (each claim asks for a batch, each pop finds one message)
    drainer.run_once()

    # Then the tokens not used by a message are still in the bucket (15 went to slots the pop
    # dropped, and every other org waited a second for the bucket to refill)
    tokens = float(redis_client.hget(pace._rate, "tokens") or 0)
    assert len(broker.entries) + tokens >= 15, (len(broker.entries), tokens)


def test_a_claim_the_full_budget_refuses_does_not_skip_the_env_it_picked(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given one org with two envs and a budget of one slot, freed every other tick
    seed(buffer, "a", "e1", 10)
    seed(buffer, "a", "e2", 10)
    broker = Broker()
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=1)
    drainer = MollifierDrainer(buffer, broker, batch_size=5, pace=pace)
    for _ in range(8):
        drainer.run_once()  # gets the free slot
        drainer.run_once()  # the budget is full: paced, the org keeps its turn
        pace.release([entry.message_id for entry in broker.entries])

    # Then both envs were drained (e2 never was: each refused claim moved its turn on)
    assert Counter(entry.env_id for entry in broker.entries) == {"e1": 4, "e2": 4}
