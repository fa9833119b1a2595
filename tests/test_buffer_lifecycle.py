"""ack, requeue, fail, dead letters and depth through an entry's whole life."""

from __future__ import annotations

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.core import STALE_OWNER
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.models import EntryStatus

from .layout_helpers import all_keys, group, org_beside
from .mollifier_helpers import wait_server_ms


def keys_of(client: redis.Redis) -> set[bytes | str]:
    # The drainers' wake-up list is a signal to idle drainers (at most 8 tokens), not an entry's state.
    return {key for key in all_keys(client) if not key.endswith(b":drain:wake")}


def depths(buffer: MollifierBuffer) -> tuple[int, int, int]:
    return buffer.depth(), buffer.depth("o"), buffer.depth("o", "e")


@pytest.mark.parametrize("status", ["QUEUED", "DRAINING", "FAILED"])
def test_ack_removes_the_entry_and_everything_referring_to_it(
    buffer: MollifierBuffer, redis_client: redis.Redis, status: str
) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    if status != "QUEUED":
        assert DrainProtocol(buffer).pop("o", "e") is not None
    if status == "FAILED":
        assert DrainProtocol(buffer).fail("m1", code="E", message="boom")

    DrainProtocol(buffer).ack("m1")

    assert buffer.get("m1") is None
    assert depths(buffer) == (0, 0, 0)
    assert buffer.orgs() == []
    assert buffer.failed() == []
    # Nothing is left behind at all: no queue reference, lease, dead letter, index or counter.
    assert keys_of(redis_client) == set()


def test_ack_of_a_missing_id_is_a_no_op(buffer: MollifierBuffer, redis_client: redis.Redis) -> None:
    DrainProtocol(buffer).ack("missing")
    assert redis_client.dbsize() == 0


def test_ack_with_a_wrong_tenant_hint_still_acks_the_right_entry(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    assert DrainProtocol(buffer).pop("o", "e") is not None

    DrainProtocol(buffer).ack("m1", org_id="o", env_id="not-e")

    assert buffer.get("m1") is None
    assert depths(buffer) == (0, 0, 0)


def test_ack_many_removes_entries_and_counts_the_ones_that_existed(buffer: MollifierBuffer) -> None:
    for n in range(5):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")
    popped = DrainProtocol(buffer).pop_many("o", "e", 3)

    removed = DrainProtocol(buffer).ack_many([e.message_id for e in popped] + ["m4", "missing"])

    assert removed == 4
    assert DrainProtocol(buffer).ack_many([]) == 0
    assert [buffer.get(f"m{n}") is None for n in range(5)] == [True, True, True, False, True]
    assert depths(buffer) == (1, 1, 1)


def test_ack_entries_removes_popped_entries_of_several_tenants_in_one_call(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    for org, env in (("o", "e"), ("o", "f"), ("p", "e")):
        for n in range(3):
            buffer.accept(f"{org}{env}{n}", org_id=org, env_id=env, payload=b"x")
    popped = [
        *DrainProtocol(buffer).pop_many("o", "e", 3),
        *DrainProtocol(buffer).pop_many("o", "f", 2),
        *DrainProtocol(buffer).pop_many("p", "e", 3),
    ]

    assert DrainProtocol(buffer).ack_entries(popped) == (8, [])
    assert DrainProtocol(buffer).ack_entries([]) == (0, [])

    assert all(buffer.get(e.message_id) is None for e in popped)
    assert redis_client.zcard(group(buffer).leases) == 0
    # Only the one entry never popped is left, and counted.
    assert (buffer.depth(), buffer.depth("o"), buffer.depth("o", "f"), buffer.depth("p")) == (1, 1, 1, 0)
    assert buffer.get("of2") is not None
    DrainProtocol(buffer).ack("of2")
    assert keys_of(redis_client) == set()


def test_ack_entries_refuses_entries_whose_lease_passed_to_someone_else(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # m0 stays DRAINING; m1 was requeued (QUEUED again); m2 failed meanwhile; m3 is gone; m4 was
    # given back and popped again by another drainer.
    for n in range(5):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")
    popped = DrainProtocol(buffer).pop_many("o", "e", 5)
    assert DrainProtocol(buffer).requeue("m1")
    assert DrainProtocol(buffer).fail("m2", code="E", message="boom")
    DrainProtocol(buffer).ack("m3")
    assert DrainProtocol(buffer).release([popped[4]]) == 1
    popped_again = DrainProtocol(buffer).pop_many("o", "e", 5)
    assert [e.message_id for e in popped_again] == ["m4", "m1"]

    acked = DrainProtocol(buffer).ack_entries(popped)

    # Only m0 was still this pop's: the rest are refused and left as they are.
    assert acked.removed == 1
    assert [e.message_id for e in acked.refused] == ["m1", "m2", "m4"]
    assert buffer.get("m0") is None
    assert [e.message_id for e in buffer.failed()] == ["m2"]
    assert DrainProtocol(buffer).ack_entries(popped_again) == (2, [])
    assert depths(buffer) == (0, 0, 0)


def test_a_stale_owner_can_neither_ack_fail_requeue_nor_release(buffer: MollifierBuffer) -> None:
    # Given an entry popped by a drainer whose lease then passed on: given back, popped again
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    protocol = DrainProtocol(buffer)
    stale = protocol.pop("o", "e")
    assert stale is not None
    assert protocol.release([stale]) == 1
    current = protocol.pop("o", "e")
    assert current is not None
    assert current.lease_owner != stale.lease_owner
    where = {"org_id": "o", "env_id": "e"}

    # When the stale owner settles it, every call is refused and changes nothing
    assert protocol.ack("m1", owner=stale.lease_owner, **where) == STALE_OWNER
    assert not protocol.fail("m1", code="E", message="late", owner=stale.lease_owner, **where)
    assert not protocol.requeue("m1", owner=stale.lease_owner, **where)
    assert protocol.release([stale]) == 0
    assert protocol.ack_entries([stale]).refused == [stale]
    entry = buffer.get("m1")
    assert entry is not None
    assert (entry.status, entry.attempts) == (EntryStatus.DRAINING, 0)

    # Then the current owner still settles it
    assert protocol.ack("m1", owner=current.lease_owner, **where) == 1
    assert buffer.get("m1") is None


def test_ack_entries_leaves_an_entry_whose_id_moved_to_another_tenant_alone(buffer: MollifierBuffer) -> None:
    # An entry whose id was reused by another tenant since it was popped is someone else's.
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    popped = DrainProtocol(buffer).pop("o", "e")
    assert popped is not None
    DrainProtocol(buffer).ack("m1")
    # (an org whose keys are in o's slot group: elsewhere the id would name another hash)
    other = org_beside(buffer, "o", "p")
    buffer.accept("m1", org_id=other, env_id="e", payload=b"y")

    # Refused: the entry under that id now is not the one this pop leased.
    assert DrainProtocol(buffer).ack_entries([popped]).refused == [popped]

    assert buffer.get("m1") is not None
    assert (buffer.depth(), buffer.depth("o"), buffer.depth(other)) == (1, 0, 1)


def test_requeue_goes_to_the_tail_with_one_more_attempt(buffer: MollifierBuffer) -> None:
    # Given m1 popped while m2 and m3 wait
    for n in (1, 2, 3):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")
    assert DrainProtocol(buffer).pop("o", "e") is not None

    # When m1 is requeued
    assert DrainProtocol(buffer).requeue("m1")

    # Then it is drained after what was already queued, as QUEUED with attempts 1
    entry = buffer.get("m1")
    assert entry is not None
    assert (entry.status, entry.attempts) == (EntryStatus.QUEUED, 1)
    order = [e.message_id for e in DrainProtocol(buffer).pop_many("o", "e", 10)]
    assert order == ["m2", "m3", "m1"]
    assert DrainProtocol(buffer).requeue("m1", org_id="o", env_id="e")
    again = DrainProtocol(buffer).pop("o", "e")
    assert again is not None
    assert again.attempts == 2


def test_requeue_drops_the_lease(buffer: MollifierBuffer, redis_client: redis.Redis) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert redis_client.zscore(group(buffer).leases, "m1") is not None

    assert DrainProtocol(buffer).requeue("m1")

    assert redis_client.zscore(group(buffer).leases, "m1") is None


def test_requeue_of_a_queued_entry_moves_it_to_the_tail_once(buffer: MollifierBuffer) -> None:
    for n in (1, 2):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")

    assert DrainProtocol(buffer).requeue("m1")

    assert [e.message_id for e in DrainProtocol(buffer).pop_many("o", "e", 10)] == ["m2", "m1"]
    assert depths(buffer) == (2, 2, 2)


def test_requeue_and_fail_of_a_missing_id_create_nothing(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # Given a buffer with unrelated work in it
    buffer.accept("other", org_id="o", env_id="e", payload=b"x")
    before = keys_of(redis_client)
    size = redis_client.dbsize()

    # When requeue and fail name ids that do not exist, with and without tenant hints
    assert not DrainProtocol(buffer).requeue("missing")
    assert not DrainProtocol(buffer).requeue("missing", org_id="o2", env_id="e2")
    assert not DrainProtocol(buffer).fail("missing", code="E", message="m")
    assert not DrainProtocol(buffer).fail("missing", code="E", message="m", org_id="o2", env_id="e2")
    assert not buffer.retry_failed("missing")

    # Then no key was created
    assert keys_of(redis_client) == before
    assert redis_client.dbsize() == size


def test_fail_keeps_a_dead_letter_with_the_last_error(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    popped = DrainProtocol(buffer).pop("o", "e")
    assert popped is not None

    assert DrainProtocol(buffer).fail("m1", code="ValueError", message="bad input", org_id="o", env_id="e")

    entry = buffer.get("m1")
    assert entry is not None
    assert entry.status is EntryStatus.FAILED
    assert entry.last_error == ("ValueError", "bad input")
    assert entry.payload == b"x"
    assert [e.message_id for e in buffer.failed()] == ["m1"]
    assert depths(buffer) == (0, 0, 0)  # FAILED is not counted


def test_failed_lists_oldest_failure_first_and_filters_by_org_and_env(buffer: MollifierBuffer) -> None:
    tenants = [("a", "prod"), ("a", "dev"), ("b", "prod")]
    for n, (org, env) in enumerate(tenants * 2):
        buffer.accept(f"m{n}", org_id=org, env_id=env, payload=b"x")
    for org, env in tenants * 2:
        assert DrainProtocol(buffer).pop(org, env) is not None
    # Failed in this order: m3, m0, m5, m1 (m2 and m4 stay DRAINING); failure times are kept to
    # the millisecond, so the failures are spread out a little.
    for message_id in ("m3", "m0", "m5", "m1"):
        assert DrainProtocol(buffer).fail(message_id, code="E", message=message_id)
        wait_server_ms(buffer.client, 2)

    assert [e.message_id for e in buffer.failed()] == ["m3", "m0", "m5", "m1"]
    assert [e.message_id for e in buffer.failed("a")] == ["m3", "m0", "m1"]
    assert [e.message_id for e in buffer.failed("a", "dev")] == ["m1"]
    assert [e.message_id for e in buffer.failed("b", "prod")] == ["m5"]
    assert buffer.failed("c") == []
    assert all(e.status is EntryStatus.FAILED for e in buffer.failed())
    with pytest.raises(ValueError, match="org_id"):
        buffer.failed(env_id="prod")


def test_retry_failed_requeues_at_the_tail_with_attempts_reset(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert DrainProtocol(buffer).requeue("m1")
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert DrainProtocol(buffer).fail("m1", code="E", message="boom")
    buffer.accept("m2", org_id="o", env_id="e", payload=b"y")

    assert buffer.retry_failed("m1")

    entry = buffer.get("m1")
    assert entry is not None
    assert (entry.status, entry.attempts) == (EntryStatus.QUEUED, 0)
    assert buffer.failed() == []
    assert buffer.orgs() == ["o"]
    assert depths(buffer) == (2, 2, 2)
    assert [e.message_id for e in DrainProtocol(buffer).pop_many("o", "e", 10)] == ["m2", "m1"]


def test_retry_failed_refuses_entries_that_are_not_failed(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    assert not buffer.retry_failed("m1")
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert not buffer.retry_failed("m1")
    assert depths(buffer) == (1, 1, 1)


def test_purge_failed_deletes_dead_letters_by_scope(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    tenants = [("a", "prod"), ("a", "dev"), ("b", "prod")]
    for n, (org, env) in enumerate(tenants * 2):
        buffer.accept(f"m{n}", org_id=org, env_id=env, payload=b"x")
        assert DrainProtocol(buffer).pop(org, env) is not None
        assert DrainProtocol(buffer).fail(f"m{n}", code="E", message="m")
    buffer.accept("live", org_id="a", env_id="prod", payload=b"x")

    assert buffer.purge_failed("a", "dev") == 2
    assert sorted(e.message_id for e in buffer.failed()) == ["m0", "m2", "m3", "m5"]
    assert buffer.purge_failed("a") == 2
    assert sorted(e.message_id for e in buffer.failed()) == ["m2", "m5"]
    assert buffer.purge_failed() == 2
    assert buffer.failed() == []
    assert buffer.purge_failed() == 0

    # Only the live entry and its indexes remain; the dead-letter indexes are gone.
    assert buffer.get("live") is not None
    assert not redis_client.exists(group(buffer).failed_orgs)
    assert not redis_client.exists(buffer.keys.failed_envs("a"))


def test_purge_failed_spans_more_than_one_batch(buffer: MollifierBuffer) -> None:
    for n in range(1_100):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"")
    entries = DrainProtocol(buffer).pop_many("o", "e", 1_100)
    assert len(entries) == 1_100
    for entry in entries:
        DrainProtocol(buffer).fail(entry.message_id, code="E", message="", org_id="o", env_id="e")

    assert buffer.purge_failed("o", "e") == 1_100
    assert buffer.failed() == []


def test_depth_counts_queued_and_draining_through_the_lifecycle(buffer: MollifierBuffer) -> None:
    assert depths(buffer) == (0, 0, 0)
    buffer.accept("m1", org_id="o", env_id="e", payload=b"")
    buffer.accept("m2", org_id="o", env_id="e", payload=b"")
    buffer.accept("x1", org_id="o", env_id="other", payload=b"")
    buffer.accept("y1", org_id="p", env_id="e", payload=b"")
    assert depths(buffer) == (4, 3, 2)
    assert buffer.depth("p") == 1
    assert buffer.depth("p", "e") == 1

    assert DrainProtocol(buffer).pop("o", "e") is not None  # DRAINING still counts
    assert depths(buffer) == (4, 3, 2)
    assert DrainProtocol(buffer).requeue("m1")
    assert depths(buffer) == (4, 3, 2)
    assert DrainProtocol(buffer).pop("o", "e") is not None
    assert DrainProtocol(buffer).fail("m2", code="E", message="m")  # the popped m2; FAILED is not counted
    assert depths(buffer) == (3, 2, 1)
    assert buffer.retry_failed("m2")
    assert depths(buffer) == (4, 3, 2)
    DrainProtocol(buffer).ack("m1")
    DrainProtocol(buffer).ack("m2")
    assert depths(buffer) == (2, 1, 0)
    DrainProtocol(buffer).ack_many(["x1", "y1"])
    assert depths(buffer) == (0, 0, 0)
    assert buffer.depth("nobody") == 0


def test_depth_of_an_env_needs_its_org(buffer: MollifierBuffer) -> None:
    with pytest.raises(ValueError, match="org_id"):
        buffer.depth(env_id="e")


def test_depth_counters_are_removed_when_they_reach_zero(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"")
    assert redis_client.hlen(group(buffer).depth) == 4  # total, indexed, the org's, the env's

    DrainProtocol(buffer).ack("m1")

    assert not redis_client.exists(group(buffer).depth)


def test_release_gives_popped_entries_back_at_the_head_untried(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    for n in range(5):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")
    popped = DrainProtocol(buffer).pop_many("o", "e", 3)
    DrainProtocol(buffer).ack(popped[0].message_id, org_id="o", env_id="e")

    assert DrainProtocol(buffer).release(popped) == 2  # the acked one is gone, not brought back

    assert redis_client.zcard(group(buffer).leases) == 0
    assert buffer.depth() == 4
    again = DrainProtocol(buffer).pop_many("o", "e", 10)
    assert [e.message_id for e in again] == ["m1", "m2", "m3", "m4"]
    assert [e.attempts for e in again] == [0, 0, 0, 0]
