"""Leases on DRAINING entries and their reclaim; entry expiry only when entry_ttl_s is set."""

from __future__ import annotations

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.models import EntryStatus

from .layout_helpers import all_keys, entry_key, group
from .mollifier_helpers import (
    eventually,
    latest_lease_deadline,
    server_ms,
    wait_for_leases_to_expire,
    wait_past,
)


@pytest.fixture
def buffer(redis_client: redis.Redis, key_prefix: str) -> MollifierBuffer:
    return MollifierBuffer(redis_client, key_prefix=key_prefix, lease_ms=50)


def test_pop_records_a_lease_deadline_in_server_time(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    before = server_ms(redis_client)

    assert DrainProtocol(buffer).pop("o", "e") is not None

    deadline = redis_client.zscore(group(buffer).leases, "m1")
    assert deadline is not None
    assert before + 50 <= deadline <= server_ms(redis_client) + 50


def test_an_entry_whose_drainer_died_is_reclaimed_after_its_lease(
    redis_url: str, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a drainer that popped m1 and then died (its client is gone, it never acks)
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, lease_ms=50)
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    buffer.accept("m2", org_id="o", env_id="e", payload=b"y")
    dead_client = client_from_url(redis_url)
    # A lease long enough that the check below runs within it on a loaded machine (50 ms was not,
    # once, in the cluster pass: the next line then found it expired already).
    dead = MollifierBuffer(dead_client, key_prefix=key_prefix, lease_ms=1_000)
    assert DrainProtocol(dead).pop("o", "e") is not None
    dead_client.close()

    # While its lease is live, nobody takes it back
    assert DrainProtocol(buffer).reclaim_expired() == []

    # When the lease has passed, a live drainer reclaims it to the tail of its queue
    wait_for_leases_to_expire(buffer)
    assert DrainProtocol(buffer).reclaim_expired() == ["m1"]
    entry = buffer.get("m1")
    assert entry is not None
    assert (entry.status, entry.attempts) == (EntryStatus.QUEUED, 0)
    assert redis_client.zscore(group(buffer).leases, "m1") is None
    assert DrainProtocol(buffer).reclaim_expired() == []
    assert [e.message_id for e in DrainProtocol(buffer).pop_many("o", "e", 10)] == ["m2", "m1"]
    assert buffer.depth("o", "e") == 2


def test_reclaim_records_the_env_and_org_again(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert buffer.orgs() == []

    wait_for_leases_to_expire(buffer)
    assert DrainProtocol(buffer).reclaim_expired() == ["m1"]

    assert buffer.orgs() == ["o"]
    assert buffer.envs("o") == ["e"]


def test_acked_requeued_and_failed_entries_are_not_reclaimed(buffer: MollifierBuffer) -> None:
    for n in range(3):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")
    assert len(DrainProtocol(buffer).pop_many("o", "e", 3)) == 3
    deadline = latest_lease_deadline(buffer)
    DrainProtocol(buffer).ack("m0")
    assert DrainProtocol(buffer).requeue("m1")
    assert DrainProtocol(buffer).fail("m2", code="E", message="m")

    wait_past(buffer, deadline)

    assert DrainProtocol(buffer).reclaim_expired() == []
    failed = buffer.get("m2")
    assert failed is not None
    assert failed.status is EntryStatus.FAILED


def test_reclaim_drops_a_lease_whose_entry_is_gone(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    redis_client.zadd(group(buffer).leases, {"ghost": 1})

    assert DrainProtocol(buffer).reclaim_expired() == []

    assert not redis_client.exists(group(buffer).leases)
    assert buffer.get("ghost") is None


def test_reclaim_gives_back_the_counts_of_a_draining_entry_whose_hash_vanished(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # Given a DRAINING entry whose hash is evicted or deleted by hand (ids with the separator
    # in them, so the tenant recorded at pop must be parsed back, not split)
    org, env = "o:1", "e:x"
    buffer.accept("m1", org_id=org, env_id=env, payload=b"x")
    buffer.accept("m2", org_id=org, env_id=env, payload=b"y")
    assert DrainProtocol(buffer).pop(org, env) is not None
    redis_client.delete(entry_key(buffer, "m1", org))
    wait_for_leases_to_expire(buffer)

    # When its lease is reclaimed
    assert DrainProtocol(buffer).reclaim_expired() == []

    # Then it is no longer counted, and once the rest is drained every counter is back to 0
    assert (buffer.depth(), buffer.depth(org), buffer.depth(org, env)) == (1, 1, 1)
    DrainProtocol(buffer).ack("m2")
    assert buffer.depth() == 0
    assert not redis_client.exists(group(buffer).depth)
    assert not redis_client.exists(group(buffer).leases)


def test_reclaim_handles_more_expired_leases_than_one_batch(buffer: MollifierBuffer) -> None:
    for n in range(700):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"")
    assert len(DrainProtocol(buffer).pop_many("o", "e", 700)) == 700

    wait_for_leases_to_expire(buffer)
    reclaimed = DrainProtocol(buffer).reclaim_expired()

    assert sorted(reclaimed) == sorted(f"m{n}" for n in range(700))
    assert buffer.depth() == 700


def test_no_entry_expires_by_default(buffer: MollifierBuffer, redis_client: redis.Redis) -> None:
    # divert mode: the buffer holds the only copy, so nothing may expire silently
    for n in range(3):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert DrainProtocol(buffer).fail("m1", code="E", message="m")
    assert DrainProtocol(buffer).requeue("m0")

    for key in all_keys(redis_client):
        assert redis_client.pttl(key) == -1, key


def test_entry_ttl_applies_to_queued_entries_and_not_to_draining_ones(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, entry_ttl_s=30)
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    m1_key = entry_key(buffer, "m1")
    assert 0 < redis_client.pttl(m1_key) <= 30_000

    # a popped entry is persisted: it cannot vanish while leased
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert redis_client.pttl(m1_key) == -1

    # back in the queue, it expires again
    assert DrainProtocol(buffer).requeue("m1")
    assert 0 < redis_client.pttl(m1_key) <= 30_000

    # and so do dead letters
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert DrainProtocol(buffer).fail("m1", code="E", message="m")
    assert 0 < redis_client.pttl(m1_key) <= 30_000
    # only entries expire: queues, indexes and counters do not
    others = [key for key in all_keys(redis_client) if key != m1_key.encode()]
    assert others
    assert all(redis_client.pttl(key) == -1 for key in others)


def test_an_expired_entry_is_skipped_at_pop_and_its_depth_fixed(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a 60 s entry TTL and two entries, the first of which expires (sooner, by hand: the
    # server's own expiry, without a race against the second entry's)
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, entry_ttl_s=60)
    buffer.accept("old", org_id="o", env_id="e", payload=b"x")
    buffer.accept("new", org_id="o", env_id="e", payload=b"y")
    redis_client.pexpire(entry_key(buffer, "old"), 1)
    eventually(lambda: not redis_client.exists(entry_key(buffer, "old")), what="the entry to expire")
    assert buffer.get("old") is None
    assert buffer.depth("o", "e") == 2  # the expired entry is still counted until a pop meets it

    # When popping, the orphan reference is skipped and its count dropped
    entry = DrainProtocol(buffer).pop("o", "e")

    assert entry is not None
    assert entry.message_id == "new"
    assert (buffer.depth(), buffer.depth("o"), buffer.depth("o", "e")) == (1, 1, 1)
    DrainProtocol(buffer).ack("new")
    assert buffer.depth() == 0
    assert buffer.orgs() == []


def test_an_expired_then_reaccepted_id_is_drained_once_and_counted_once(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given m1 expired (its queue reference stays) and was accepted again
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, entry_ttl_s=60)
    buffer.accept("m1", org_id="o", env_id="e", payload=b"old")
    redis_client.delete(entry_key(buffer, "m1"))  # what expiry does
    assert buffer.accept("m1", org_id="o", env_id="e", payload=b"new")

    # When draining the env
    popped = DrainProtocol(buffer).pop_many("o", "e", 10)

    # Then the new entry is handed out once and the counters end at zero
    assert [(e.message_id, e.payload) for e in popped] == [("m1", b"new")]
    assert buffer.depth("o", "e") == 1
    DrainProtocol(buffer).ack("m1")
    assert (buffer.depth(), buffer.depth("o"), buffer.depth("o", "e")) == (0, 0, 0)
    assert DrainProtocol(buffer).pop("o", "e") is None
    assert buffer.orgs() == []


def test_expired_dead_letters_are_not_listed_nor_counted_by_purge(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, entry_ttl_s=60)
    for n in range(2):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")
        assert DrainProtocol(buffer).pop("o", "e") is not None
        assert DrainProtocol(buffer).fail(f"m{n}", code="E", message="m")
    redis_client.delete(entry_key(buffer, "m0"))  # what expiry does

    assert [e.message_id for e in buffer.failed()] == ["m1"]
    assert buffer.purge_failed() == 1
    assert all_keys(redis_client) == [group(buffer).drain_wake.encode()]  # tokens for idle drainers
