"""Leases with an owner: a stale owner is refused, a live owner renews, a failed ack is retried.

Real Redis throughout; the Redis-restart test runs the buffer on a server of its own, which it
stops and starts again with its data (``SHUTDOWN SAVE``), as a failover or a restart would.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.connections import drain_client
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.handler import make_drain_handler
from dramatiq_mollifier.drain.housekeeping import MAX_LEASE_EXPIRIES
from dramatiq_mollifier.drain.leases import LeaseKeeper
from dramatiq_mollifier.drain.settling import Settler
from dramatiq_mollifier.embedded import EmbeddedRedis
from dramatiq_mollifier.models import BufferEntry, EntryStatus
from dramatiq_mollifier.telemetry import Telemetry

from .layout_helpers import group
from .mollifier_helpers import counts, eventually, metrics


def popped_twice(buffer: MollifierBuffer) -> tuple[DrainProtocol, BufferEntry, BufferEntry]:
    """Entry m1 as its first drainer holds it (stale: its lease expired and was reclaimed) and as
    the drainer that popped it next holds it."""
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    stale = protocol.pop("acme", "prod")
    assert stale is not None
    buffer.client.zadd(group(buffer, "acme").leases, {"m1": 0})
    assert protocol.reclaim_expired() == ["m1"]
    current = protocol.pop("acme", "prod")
    assert current is not None
    return protocol, stale, current


def test_a_stale_owners_ack_is_refused_and_counted(buffer: MollifierBuffer) -> None:
    # Given an entry whose first drainer stalled past its lease: reclaimed, popped by another
    protocol, stale, current = popped_twice(buffer)
    provider, reader = metrics()
    settler = Settler(protocol, telemetry=Telemetry(provider), max_attempts=3, is_retryable=lambda e: True)

    # When the stalled drainer's handler returns and it acks
    assert settler.settle([(stale, None)]) == (0, 0)

    # Then the ack is refused and counted, and the entry stays with its current owner
    assert counts(reader, "mollifier.drained", "result") == {("stale",): 1}
    entry = buffer.get("m1")
    assert entry is not None
    assert entry.status is EntryStatus.DRAINING
    assert settler.settle([(current, None)]) == (1, 0)
    assert buffer.get("m1") is None


@pytest.mark.parametrize(("max_attempts", "doing"), [(1, "dead-lettering"), (3, "requeueing")])
def test_a_stale_owners_failure_is_refused_and_counted_stale_not_failed_or_requeued(
    buffer: MollifierBuffer, max_attempts: int, doing: str
) -> None:
    # Given an entry whose first drainer stalled past its lease: reclaimed, popped by another
    protocol, stale, current = popped_twice(buffer)
    provider, reader = metrics()
    telemetry = Telemetry(provider)
    settler = Settler(
        protocol,
        telemetry=telemetry,
        max_attempts=max_attempts,
        is_retryable=lambda e: True,
        retry_delay_ms=0,
    )

    # When the stalled drainer's handler failed, and the current owner then delivers it
    settler.settle([(stale, RuntimeError("broker write failed"))])
    Settler(protocol, telemetry=telemetry, max_attempts=3, is_retryable=lambda e: True).settle(
        [(current, None)]
    )

    # Then the message is counted once as delivered: the refused settle is stale (it was
    # counted failed or requeued, so one message counted twice)
    assert counts(reader, "mollifier.drained", "result") == {("stale",): 1, ("acked",): 1}, doing
    assert buffer.get("m1") is None and buffer.failed() == []


def test_a_batch_handled_serially_for_longer_than_its_lease_is_not_duplicated(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a lease of 300 ms, and a drainer whose handlers run one at a time for 150 ms each:
    # the last entry of its batch is handled some 750 ms after the pop
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, lease_ms=300)
    for n in range(5):
        buffer.accept(f"m{n}", org_id="acme", env_id="prod", payload=b"x")
    handled: Counter[str] = Counter()
    one_at_a_time = threading.Lock()

    def slow(entry: BufferEntry) -> None:
        with one_at_a_time:
            time.sleep(0.15)
            handled[entry.message_id] += 1

    def fast(entry: BufferEntry) -> None:
        handled[entry.message_id] += 1

    slow_drainer = MollifierDrainer(buffer, slow, concurrency=5, batch_size=5, poll_interval_ms=10)
    # and another drainer reclaiming expired leases every 20 ms
    other = MollifierDrainer(buffer, fast, poll_interval_ms=10, reclaim_interval_ms=20, idle_wait_ms=0)
    slow_drainer.start()
    try:
        eventually(
            lambda: redis_client.zcard(group(buffer, "acme").leases) == 5, what="the batch to be popped"
        )
        other.start()
        # When the batch is handled, past its lease
        eventually(lambda: buffer.depth() == 0, what="the batch to be handled")
    finally:
        assert slow_drainer.stop(5_000)
        assert other.stop(5_000)

    # Then its leases were renewed: each entry was handled once, by the drainer that popped it
    assert handled == {f"m{n}": 1 for n in range(5)}


def test_renewal_leaves_an_entry_that_passed_to_another_owner_alone(buffer: MollifierBuffer) -> None:
    for n in range(2):
        buffer.accept(f"m{n}", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    mine = protocol.pop_many("acme", "prod", 2)
    keeper = LeaseKeeper(protocol)
    keeper.hold(mine)
    # m1's lease expires and another drainer takes it
    buffer.client.zadd(group(buffer, "acme").leases, {"m1": 0})
    assert protocol.reclaim_expired() == ["m1"]
    theirs = protocol.pop("acme", "prod")
    assert theirs is not None
    before = buffer.client.zscore(group(buffer, "acme").leases, "m1")

    assert keeper.renew() == 1

    assert len(keeper) == 1  # m1 is not renewed any more
    assert buffer.client.zscore(group(buffer, "acme").leases, "m1") == before
    assert (buffer.client.zscore(group(buffer, "acme").leases, "m0") or 0) >= before - 100


@pytest.mark.parametrize(
    ("lease_ms", "outage_s"),
    [
        (5_000, 1.0),
        # Longer than the lease less its renewal interval (2 s): leases lapse during the outage,
        # and the drainer must retry its acks and renew before it reclaims
        (3_000, 2.3),
    ],
)
def test_the_buffer_redis_restarted_mid_drain_duplicates_at_most_what_was_in_flight(
    disposable_redis: EmbeddedRedis, lease_ms: int, outage_s: float
) -> None:
    # Given a backlog in a buffer whose Redis restarts (with its data) in the middle of the drain
    backlog, concurrency = 300, 4
    client = drain_client(redis.Redis.from_url(disposable_redis.url, protocol=3), socket_timeout_ms=5_000)
    buffer = MollifierBuffer(client, key_prefix="restart", lease_ms=lease_ms)
    broker = StubBroker()

    @dramatiq.actor(broker=broker)
    def record(n: int) -> None:
        pass

    ids = set()
    for n in range(backlog):
        message: dramatiq.Message[Any] = record.message(n)
        buffer.accept(message.message_id, org_id=f"org{n % 3}", env_id="prod", payload=message.encode())
        ids.add(message.message_id)
    redeliver = make_drain_handler(broker)
    handled = 0
    midway, down = threading.Event(), threading.Event()

    def handler(entry: BufferEntry) -> None:
        nonlocal handled
        redeliver(entry)
        handled += 1
        if handled == 100:
            midway.set()
            down.wait(10)  # the acks of this one and those beside it meet a server that is down

    drainer = MollifierDrainer(buffer, handler, concurrency=concurrency, batch_size=20, poll_interval_ms=20)
    drainer.start()
    try:
        assert midway.wait(10)
        redis.Redis.from_url(disposable_redis.url).shutdown(save=True)
        disposable_redis.stop()
        down.set()
        time.sleep(outage_s)  # the outage itself, not a wait for a state
        disposable_redis.start()
        # When it is back, the drain goes on
        eventually(lambda: buffer.depth() == 0, timeout_s=30, what="the backlog to drain")
    finally:
        assert drainer.stop(5_000)
        client.close()

    # Then every message reached the broker once: the acks that met the server down were
    # retried once it was back (dropping them would deliver those in flight a second time)
    delivered = Counter(dramatiq.Message.decode(raw).message_id for raw in broker.queues["default"].queue)
    broker.close()
    assert set(delivered) == ids
    assert sum(delivered.values()) == backlog, delivered.most_common(concurrency)


@pytest.mark.parametrize("lost_replies", [1, 2])
def test_an_entry_whose_lease_keeps_expiring_is_dead_lettered_with_its_reason(
    redis_client: redis.Redis, key_prefix: str, lost_replies: int
) -> None:
    # Given an entry popped by drainers that never settle it (their reply was lost, say)
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    for _ in range(lost_replies):
        assert protocol.pop("acme", "prod") is not None
        redis_client.zadd(group(buffer, "acme").leases, {"m1": 0})
        reclaimed = protocol.reclaim(max_expiries=2)

    # Then it comes back until its lease has expired max_expiries times, then is dead-lettered
    entry = buffer.get("m1")
    assert entry is not None
    if lost_replies < 2:
        assert reclaimed.requeued == ["m1"]
        assert entry.status is EntryStatus.QUEUED
        return
    assert reclaimed.dead_lettered == ["m1"]
    assert entry.status is EntryStatus.FAILED
    assert entry.last_error is not None
    assert entry.last_error[0] == "LeaseExpired"
    assert "expired 2 times" in entry.last_error[1]
    assert buffer.depth() == 0
    # and an operator's retry starts its count afresh
    assert buffer.retry_failed("m1")
    assert protocol.pop("acme", "prod") is not None
    redis_client.zadd(group(buffer, "acme").leases, {"m1": 0})
    assert protocol.reclaim(max_expiries=2).requeued == ["m1"]


def test_a_drainer_dead_letters_an_entry_whose_lease_expired_once_too_often(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given an entry whose lease expired MAX_LEASE_EXPIRIES - 1 times already (popped, never
    # settled, reclaimed), popped once more and never settled, its lease now expired
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    for _ in range(MAX_LEASE_EXPIRIES - 1):
        assert protocol.pop("acme", "prod") is not None
        redis_client.zadd(group(buffer, "acme").leases, {"m1": 0})
        assert protocol.reclaim(max_expiries=MAX_LEASE_EXPIRIES).requeued == ["m1"]
    assert protocol.pop("acme", "prod") is not None
    redis_client.zadd(group(buffer, "acme").leases, {"m1": 0})
    provider, reader = metrics()
    handled: list[str] = []

    # When a drainer reclaims it (allowing one attempt: the bound is its own, not max_attempts)
    drainer = MollifierDrainer(
        buffer, lambda entry: handled.append(entry.message_id), max_attempts=1, telemetry=Telemetry(provider)
    )
    drainer.run_once()

    # Then it is dead-lettered with its reason, not handed to a handler again
    assert handled == []
    assert [e.last_error[0] for e in buffer.failed() if e.last_error] == ["LeaseExpired"]
    assert counts(reader, "mollifier.drained", "result") == {("failed",): 1}


def test_one_lease_expiry_does_not_dead_letter_with_a_single_attempt(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given an entry held by a worker that was SIGKILLed during a deploy: its lease expired once
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    assert DrainProtocol(buffer).pop("acme", "prod") is not None
    redis_client.zadd(group(buffer, "acme").leases, {"m1": 0})
    handled: list[str] = []

    # When a drainer allowing one handler attempt reclaims it and drains
    drainer = MollifierDrainer(buffer, lambda entry: handled.append(entry.message_id), max_attempts=1)
    drainer.run_once()
    drainer.run_once()

    # Then it is delivered, not dead-lettered
    assert handled == ["m1"]
    assert buffer.failed() == []
    assert buffer.get("m1") is None


def test_an_entry_held_for_too_many_leases_is_renewed_no_more(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given an entry whose handler never returns, held by its drainer (leases of 50 ms)
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, lease_ms=50)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    entry = protocol.pop("acme", "prod")
    assert entry is not None
    keeper = LeaseKeeper(protocol)
    keeper.hold([entry])
    assert keeper.renew() == 1

    # Then after MAX_RENEWALS leases it is let go, for another drainer to reclaim
    eventually(lambda: keeper.renew() == 0 and len(keeper) == 0, what="the keeper to let it go")
    eventually(lambda: protocol.reclaim_expired() == ["m1"], what="its lease to expire")


def test_renewing_an_entry_acked_meanwhile_reports_no_lost_lease(
    buffer: MollifierBuffer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two held entries: one acked meanwhile (gone), one reclaimed and popped elsewhere
    for message_id in ("acked", "taken"):
        buffer.accept(message_id, org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    acked, taken = protocol.pop("acme", "prod"), protocol.pop("acme", "prod")
    assert acked is not None and taken is not None
    keeper = LeaseKeeper(protocol)
    keeper.hold([acked, taken])
    assert protocol.ack_entries([acked]).removed == 1
    buffer.client.zadd(group(buffer, "acme").leases, {"taken": 0})
    assert protocol.reclaim_expired() == ["taken"]
    assert protocol.pop("acme", "prod") is not None

    # When the keeper renews
    with caplog.at_level("WARNING"):
        assert keeper.renew() == 1

    # Then only the entry another drainer holds now is reported lost
    assert [protocol_entry.message_id for protocol_entry in protocol.renew([acked, taken])] == ["taken"]
    lost = [r.getMessage() for r in caplog.records if "lease_lost" in r.getMessage()]
    assert len(lost) == 1 and "'taken'" in lost[0], lost


def test_an_empty_owner_token_renews_and_acks_nothing(buffer: MollifierBuffer) -> None:
    # Given a popped entry, its lease expired
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    entry = protocol.pop("acme", "prod")
    assert entry is not None
    buffer.client.zadd(group(buffer, "acme").leases, {"m1": 0})
    ownerless = dataclasses.replace(entry, lease_owner="")

    # When a renewal and a batch ack name an empty owner
    assert protocol.renew([ownerless]) == [ownerless]
    assert protocol.ack_entries([ownerless]).removed == 0

    # Then neither applied: the lease is still expired, and the entry is still there
    assert buffer.client.zscore(group(buffer, "acme").leases, "m1") == 0
    assert protocol.reclaim_expired() == ["m1"]
