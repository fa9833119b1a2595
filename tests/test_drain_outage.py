"""A drainer whose Redis went away: what it handled while Redis was down is acked, renewed or
retried when Redis is back, before any reclaim. Real Redis on a server of its own, stopped and started.
"""

from __future__ import annotations

import time

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.connections import drain_client
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.handler_pool import NotStarted
from dramatiq_mollifier.drain.housekeeping import Housekeeping
from dramatiq_mollifier.drain.leases import LeaseKeeper
from dramatiq_mollifier.drain.settling import Settler
from dramatiq_mollifier.embedded import EmbeddedRedis
from dramatiq_mollifier.models import BufferEntry, EntryStatus
from dramatiq_mollifier.telemetry import Telemetry

from .layout_helpers import entry_key, group
from .mollifier_helpers import eventually


def test_after_an_outage_that_outlasted_the_lease_a_drainer_acks_before_it_reclaims(
    disposable_redis: EmbeddedRedis,
) -> None:
    # Given a drainer whose handler succeeded while its Redis was down (the ack failed)
    client = drain_client(redis.Redis.from_url(disposable_redis.url, protocol=3), socket_timeout_ms=5_000)
    buffer = MollifierBuffer(client, key_prefix="outage", lease_ms=3_000)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    handled: list[str] = []

    def handler(entry: BufferEntry) -> None:
        handled.append(entry.message_id)
        if len(handled) == 1:
            redis.Redis.from_url(disposable_redis.url).shutdown(save=True)
            disposable_redis.stop()

    drainer = MollifierDrainer(buffer, handler, reclaim_interval_ms=1, idle_wait_ms=0)
    try:
        drainer.run_once()
        assert handled == ["m1"]
        # and whose lease lapsed meanwhile (the outage was longer than the lease less its renewal)
        disposable_redis.start()
        client.zadd(group(buffer, "acme").leases, {"m1": 0})

        # When its next tick runs (reclaiming is due)
        drainer.run_once()
        drainer.run_once()
    finally:
        client.close()

    # Then its failed ack went through first: the entry was delivered once, not reclaimed and
    # delivered again
    assert handled == ["m1"]
    assert buffer.depth() == 0


def test_after_an_outage_a_drainer_renews_what_it_holds_before_it_reclaims(
    disposable_redis: EmbeddedRedis,
) -> None:
    # Given an entry whose handler still runs, its renewal failed during an outage that outlasted
    # the lease less its renewal interval (the lease lapsed)
    client = drain_client(redis.Redis.from_url(disposable_redis.url, protocol=3), socket_timeout_ms=5_000)
    buffer = MollifierBuffer(client, key_prefix="outage", lease_ms=3_000)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    entry = protocol.pop("acme", "prod")
    assert entry is not None
    keeper = LeaseKeeper(protocol)
    keeper.hold([entry])
    redis.Redis.from_url(disposable_redis.url).shutdown(save=True)
    disposable_redis.stop()
    with pytest.raises(Exception, match="ConnectionError"):
        keeper.renew()
    disposable_redis.start()
    client.zadd(group(buffer, "acme").leases, {"m1": 0})

    # When the drainer's housekeeping reclaims
    Housekeeping(protocol, buffer, telemetry=Telemetry(), reclaim_interval_ms=1, leases=keeper).run(
        time.monotonic(), idle=False
    )

    # Then the entry was renewed first, not reclaimed
    held = buffer.get("m1")
    assert held is not None and held.status is EntryStatus.DRAINING
    assert (client.zscore(group(buffer, "acme").leases, "m1") or 0) > 0
    client.close()


def test_a_requeue_or_release_that_meets_redis_down_is_retried_not_left_to_expire(
    disposable_redis: EmbeddedRedis,
) -> None:
    # Given two popped entries: one whose handler failed (requeued after its delay), one whose
    # handler never started (given back)
    client = drain_client(redis.Redis.from_url(disposable_redis.url, protocol=3), socket_timeout_ms=5_000)
    buffer = MollifierBuffer(client, key_prefix="settle", lease_ms=3_000)
    for message_id in ("failed", "untried"):
        buffer.accept(message_id, org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    failed, untried = protocol.pop("acme", "prod"), protocol.pop("acme", "prod")
    assert failed is not None and untried is not None
    settler = Settler(
        protocol, telemetry=Telemetry(), max_attempts=3, is_retryable=lambda e: True, retry_delay_ms=1
    )
    settler.settle([(failed, RuntimeError("boom"))])
    eventually(lambda: settler.held == 1, what="the failure to be held")

    # When Redis is down as they are requeued and given back
    redis.Redis.from_url(disposable_redis.url).shutdown(save=True)
    disposable_redis.stop()
    settler.settle([(untried, NotStarted())])
    time.sleep(0.01)  # past the 1 ms retry delay
    settler.settle_due()

    # Then both stay held (not dropped to expire as if their drainer had died) ...
    assert settler.held == 2
    disposable_redis.start()
    # ... and go back once Redis is back, without a lease expiry counted against them
    eventually(lambda: settler.settle_due() is None and settler.held == 0, what="them to go back")
    for message_id in ("failed", "untried"):
        entry = buffer.get(message_id)
        assert entry is not None and entry.status is EntryStatus.QUEUED
        assert client.hget(entry_key(buffer, message_id, "acme"), "leases_expired") is None
    client.close()


def test_a_requeue_without_a_retry_delay_that_meets_redis_down_is_retried_too(
    disposable_redis: EmbeddedRedis,
) -> None:
    # Given a drainer that requeues failures at once (drain_retry_delay_ms=0), holding the lease
    client = drain_client(redis.Redis.from_url(disposable_redis.url, protocol=3), socket_timeout_ms=5_000)
    buffer = MollifierBuffer(client, key_prefix="settle", lease_ms=3_000)
    buffer.accept("failed", org_id="acme", env_id="prod", payload=b"x")
    protocol = DrainProtocol(buffer)
    failed = protocol.pop("acme", "prod")
    assert failed is not None
    leases = LeaseKeeper(protocol)
    leases.hold([failed])
    settler = Settler(
        protocol,
        telemetry=Telemetry(),
        max_attempts=3,
        is_retryable=lambda e: True,
        retry_delay_ms=0,
        leases=leases,
    )

    # When its handler fails while Redis is down
    redis.Redis.from_url(disposable_redis.url).shutdown(save=True)
    disposable_redis.stop()
    settler.settle([(failed, RuntimeError("boom"))])

    # Then the entry is held for another try, its lease still renewed (it was dropped, to come
    # back only when the lease expired, charged as an expiry) ...
    assert settler.held == 1 and len(leases) == 1
    disposable_redis.start()
    # ... and goes back once Redis is back
    eventually(lambda: settler.settle_due() is None and settler.held == 0, what="it to go back")
    entry = buffer.get("failed")
    assert entry is not None and entry.status is EntryStatus.QUEUED and entry.attempts == 1
    assert len(leases) == 0
    assert client.hget(entry_key(buffer, "failed", "acme"), "leases_expired") is None
    client.close()
