"""The drain pace: a fleet-wide budget of drained messages waiting in the broker, on a real Redis."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.drainer import ENVS_READ_CHUNK, DrainResult, MollifierDrainer
from dramatiq_mollifier.drain.pace import Claim, DrainPace
from dramatiq_mollifier.models import BufferEntry

from .mollifier_helpers import eventually

pytestmark = pytest.mark.redis


class Broker:
    """A handler standing in for the broker write: records ids, nothing consumes them."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, entry: BufferEntry) -> None:
        with self._lock:
            self.ids.append(entry.message_id)


def seed(buffer: MollifierBuffer, org: str, count: int) -> None:
    for i in range(count):
        buffer.accept(f"{org}-{i}", org_id=org, env_id="prod", payload=b"x")


def drain_until_paced(*drainers: MollifierDrainer) -> None:
    for _ in range(20):
        results = [drainer.run_once() for drainer in drainers]
        if all(result.paced for result in results):
            return
    raise AssertionError(f"the drainers never ran out of budget: {results}")


def test_two_drainers_share_one_budget(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given 200 buffered messages and two drainers (two processes of a fleet) with one budget of 30
    seed(buffer, "burst", 200)
    broker = Broker()
    drainers = [
        MollifierDrainer(
            buffer,
            broker,
            batch_size=20,
            pace=DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=30),
        )
        for _ in range(2)
    ]

    # When both drain until the budget stops them
    drain_until_paced(*drainers)

    # Then 30 messages reached the broker in all, not 30 per drainer
    assert len(broker.ids) == 30
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=30)
    assert pace.in_use() == 30

    # When workers start 12 of them, exactly 12 more are drained
    pace.release(broker.ids[:12])
    drain_until_paced(*drainers)
    assert len(broker.ids) == 42
    assert len(set(broker.ids)) == 42
    assert buffer.depth() == 200 - 42


def test_a_paced_tick_says_so_and_leaves_the_org_first_in_line(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    seed(buffer, "a", 10)
    seed(buffer, "b", 10)
    broker = Broker()
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=5)
    drainer = MollifierDrainer(buffer, broker, batch_size=5, pace=pace)

    assert drainer.run_once() == DrainResult(drained=5, failed=0, paced=True)
    assert {message_id[0] for message_id in broker.ids} == {"a"}

    # b got nothing: once slots are free it is served before a again
    pace.release(broker.ids)
    drainer.run_once()
    assert {message_id[0] for message_id in broker.ids[5:10]} == {"b"}


def test_a_slot_whose_message_never_starts_frees_itself(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a budget of 2 held by messages lost from the broker (never started, never released)
    seed(buffer, "a", 4)
    broker = Broker()
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=2, outstanding_ttl_ms=200)
    drainer = MollifierDrainer(buffer, broker, pace=pace)
    drainer.run_once()
    assert len(broker.ids) == 2

    # Then the budget comes back by itself once their deadline passes
    eventually(lambda: not drainer.run_once().paced or len(broker.ids) > 2, what="the slots to expire")
    assert len(broker.ids) == 4


def test_a_failed_broker_write_gives_its_slot_back_at_once(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    seed(buffer, "a", 3)
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=3)

    def broker_down(entry: BufferEntry) -> None:
        raise ConnectionError("broker down")

    drainer = MollifierDrainer(buffer, broker_down, pace=pace, max_attempts=10)
    drainer.run_once()

    assert pace.in_use() == 0


def test_the_rate_cap_is_fleet_wide(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    paces = [
        DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=1_000, rate_per_s=50) for _ in range(2)
    ]
    # Two drainers asking at once for far more than a second's worth get one second's worth
    granted = sum(pace.claim(100).granted for pace in paces)
    assert 50 <= granted <= 52  # the bucket refills during the two calls


def test_settings_reject_a_budget_out_of_range() -> None:
    from dramatiq_mollifier import MollifierConfigurationError, MollifierSettings

    with pytest.raises(MollifierConfigurationError, match="drain_max_outstanding"):
        MollifierSettings(drain_max_outstanding=-1)
    with pytest.raises(MollifierConfigurationError, match="drain_rate_limit_per_s"):
        MollifierSettings(drain_rate_limit_per_s=10**9)


def test_reclaimed_entries_give_back_the_slots_their_dead_drainer_held(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a drainer that died holding the whole budget: 5 entries popped and bound, never enqueued
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, lease_ms=200)
    seed(buffer, "a", 5)
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=5, outstanding_ttl_ms=60_000)
    claim = pace.claim(5)
    popped = DrainProtocol(buffer).pop_many("a", "prod", 5)
    pace.bind(claim, [entry.message_id for entry in popped])
    assert pace.in_use() == 5

    # When another drainer reclaims them once their lease expired
    broker = Broker()
    drainer = MollifierDrainer(buffer, broker, pace=pace, reclaim_interval_ms=1)
    eventually(lambda: drainer.run_once().drained == 5, what="the reclaimed entries to be drained")

    # Then it drained them at once instead of waiting for the dead drainer's slots to expire
    assert sorted(broker.ids) == sorted(entry.message_id for entry in popped)


def test_a_claim_the_budget_cuts_short_ends_the_tick_and_the_next_org_goes_first(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Claiming again right after a short claim would get the slot or two freed meanwhile: a
    pop, a broker write, an ack and the budget's round trips for a message or two, which made a
    drained message cost about twice the round trips under the adaptive budget."""
    # Given two orgs with work and a budget of 7, fewer than a drainer asks for at once
    seed(buffer, "a", 50)
    seed(buffer, "b", 50)
    broker = Broker()
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=7)
    claims: list[tuple[int, int]] = []
    claim = pace.claim

    def counted(wanted: int, *, own: int = 0, moves: bool = False) -> Claim:
        granted = claim(wanted, own=own, moves=moves)
        claims.append((wanted, granted.granted))
        return granted

    pace.claim = counted  # type: ignore[method-assign]
    drainer = MollifierDrainer(buffer, broker, batch_size=20, pace=pace)

    # When a tick drains: it took the 7 slots in one claim and stopped, paced (no second claim
    # for what was freed meanwhile, no claim for b that could only come back empty)
    assert drainer.run_once() == DrainResult(drained=7, failed=0, paced=True)
    assert claims == [(16, 7)]
    assert {message_id[0] for message_id in broker.ids} == {"a"}

    # Then once the workers started them, b is served first: a had its visit
    pace.release(broker.ids)
    assert drainer.run_once() == DrainResult(drained=7, failed=0, paced=True)
    assert {message_id[0] for message_id in broker.ids[7:]} == {"b"}
    assert claims[1:] == [(16, 7)]


def test_orgs_that_leave_part_of_their_claim_unused_pass_it_to_the_next_org_in_the_same_tick(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Found at scale (2,000 orgs of 10 messages each, real workers): every tick ended after one
    org, since its claim got fewer slots than asked, though the org used only a few of them and
    freed the rest. The drain ran at a fifth of the workers' speed, the broker queue empty in
    two-thirds of the samples, and a light org waited up to 45 s for a rotation."""
    # Given ten orgs with two messages each and a budget of 7, fewer than a drainer asks for
    for org in "abcdefghij":
        seed(buffer, org, 2)
    broker = Broker()
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=7)
    drainer = MollifierDrainer(buffer, broker, batch_size=20, pace=pace)

    # When a tick drains: each org takes what it has, and the next takes the rest of the budget
    assert drainer.run_once() == DrainResult(drained=7, failed=0, paced=True)
    assert [message_id[0] for message_id in broker.ids] == list("aabbccd")
    assert pace.in_use() == 7

    # Then d, which used its whole (short) claim, had its turn: the next tick starts at e
    pace.release(broker.ids)
    assert drainer.run_once() == DrainResult(drained=7, failed=0, paced=True)
    assert [message_id[0] for message_id in broker.ids[7:]] == list("eeffggh")


def test_a_tick_the_budget_ends_early_reads_the_envs_of_a_few_orgs_not_of_its_whole_window(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    # At scale each such tick read the envs of 500 orgs to serve one: 60 SMEMBERS per message.
    for n in range(100):
        seed(buffer, f"org{n:03}", 5)
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=3)
    drainer = MollifierDrainer(buffer, Broker(), batch_size=20, pace=pace)
    read: list[str] = []
    envs_of = drainer._buffer.envs_of

    def counted(orgs: Sequence[str]) -> list[list[str] | None]:
        read.extend(orgs)
        return envs_of(orgs)

    drainer._buffer.envs_of = counted  # type: ignore[method-assign]

    assert drainer.run_once() == DrainResult(drained=3, failed=0, paced=True)
    assert read == [f"org{n:03}" for n in range(ENVS_READ_CHUNK)]


def test_slots_that_expire_unstarted_are_named_with_what_to_do(
    redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A drainer whose messages ran on workers of another budget (during a migration to another
    # buffer, key prefix or slot_groups) moved one budget per drain_outstanding_ttl_ms, silently:
    # about 2 messages a second in review.
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=5, outstanding_ttl_ms=50)
    claim = pace.claim(5)
    ids = [f"m{n}" for n in range(5)]
    pace.bind(claim, ids)
    pace.landed(ids)
    assert pace.claim(5).granted == 0  # held: nobody frees them

    def server_ms() -> int:
        seconds, micros = redis_client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    assert pace.in_use() == 5
    expiry_ms = server_ms() + 50
    eventually(lambda: server_ms() > expiry_ms, what="the server's clock to pass the slots' deadline")
    # The fleet gauge no longer counts them, though no claim has pruned them yet (with nothing
    # left to drain none comes: it showed messages long lost as waiting in the broker)
    assert pace.in_use() == 0

    with caplog.at_level(logging.WARNING, logger="dramatiq_mollifier.drain.pace"):
        assert pace.claim(5).granted == 5

    assert "mollifier.pace_slots_expired 5 drained messages" in caplog.text
    assert "MOLLIFIER_DRAIN_MAX_OUTSTANDING=0" in caplog.text
