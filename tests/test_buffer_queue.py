"""accept and pop: FIFO per env, idempotency, skipping bad references, the org/env indexes."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.errors import BufferUnavailableError
from dramatiq_mollifier.models import EntryStatus

from .layout_helpers import entry_key, org_beside


def test_accept_stores_a_queued_entry_with_server_time(buffer: MollifierBuffer) -> None:
    before = datetime.now(timezone.utc)
    assert buffer.accept("m1", org_id="acme", env_id="prod", payload=b"payload")

    entry = buffer.get("m1")
    assert entry is not None
    assert (entry.message_id, entry.org_id, entry.env_id) == ("m1", "acme", "prod")
    assert entry.payload == b"payload"
    assert entry.status is EntryStatus.QUEUED
    assert entry.attempts == 0
    assert entry.last_error is None
    assert entry.created_at.tzinfo is not None
    assert entry.created_at.utcoffset() == timedelta(0)
    # Server time, on the same machine as the test: close to ours.
    assert abs(entry.created_at - before) < timedelta(seconds=5)


def test_get_of_a_missing_id_is_none(buffer: MollifierBuffer) -> None:
    assert buffer.get("nope") is None


def test_pop_returns_entries_oldest_first_as_draining(buffer: MollifierBuffer) -> None:
    for n in range(3):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"%d" % n)

    popped = [DrainProtocol(buffer).pop("o", "e") for _ in range(3)]

    assert [entry.message_id for entry in popped if entry] == ["m0", "m1", "m2"]
    assert all(entry and entry.status is EntryStatus.DRAINING for entry in popped)
    stored = buffer.get("m0")
    assert stored is not None
    assert stored.status is EntryStatus.DRAINING
    assert DrainProtocol(buffer).pop("o", "e") is None


def test_pop_of_an_unknown_env_is_none_and_creates_nothing(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    assert DrainProtocol(buffer).pop("ghost", "env") is None
    assert DrainProtocol(buffer).pop_many("ghost", "env", 10) == []
    assert redis_client.dbsize() == 0


def test_pop_many_takes_up_to_limit_in_order(buffer: MollifierBuffer) -> None:
    for n in range(10):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")

    first = DrainProtocol(buffer).pop_many("o", "e", 4)
    rest = DrainProtocol(buffer).pop_many("o", "e", 100)

    assert [e.message_id for e in first] == ["m0", "m1", "m2", "m3"]
    assert [e.message_id for e in rest] == [f"m{n}" for n in range(4, 10)]
    assert buffer.depth("o", "e") == 10  # DRAINING still counts


def test_pop_many_rejects_a_limit_below_one(buffer: MollifierBuffer) -> None:
    with pytest.raises(ValueError, match="limit"):
        DrainProtocol(buffer).pop_many("o", "e", 0)


@pytest.mark.parametrize("status", ["QUEUED", "DRAINING", "FAILED"])
def test_accept_is_idempotent_in_every_status(buffer: MollifierBuffer, status: str) -> None:
    # Given an entry in the status under test
    buffer.accept("m1", org_id="o", env_id="e", payload=b"first")
    if status != "QUEUED":
        assert DrainProtocol(buffer).pop("o", "e") is not None
    if status == "FAILED":
        assert DrainProtocol(buffer).fail("m1", code="E", message="boom")
    before = buffer.get("m1")
    depth = buffer.depth()

    # When the same id is accepted again, even with another payload and tenant (of the same slot
    # group: the id is unique per group, and an org's messages all live in its one group)
    assert not buffer.accept("m1", org_id="o", env_id="e", payload=b"second")
    assert not buffer.accept("m1", org_id=org_beside(buffer, "o", "other"), env_id="x", payload=b"third")

    # Then nothing changed and it is not queued twice
    assert buffer.get("m1") == before
    assert buffer.depth() == depth
    assert buffer.orgs() == (["o"] if status == "QUEUED" else [])
    popped = DrainProtocol(buffer).pop_many("o", "e", 10)
    assert [e.message_id for e in popped] == (["m1"] if status == "QUEUED" else [])


def test_an_acked_id_may_be_accepted_again(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"first")
    entry = DrainProtocol(buffer).pop("o", "e")
    assert entry is not None
    DrainProtocol(buffer).ack(entry.message_id)

    assert buffer.accept("m1", org_id="o", env_id="e", payload=b"second")

    again = DrainProtocol(buffer).pop("o", "e")
    assert again is not None
    assert again.payload == b"second"
    assert again.attempts == 0


def test_pop_skips_references_whose_entry_is_gone_and_creates_nothing(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # Given a queue whose head refers to an entry that vanished (as an expired one does)
    buffer.accept("gone", org_id="o", env_id="e", payload=b"x")
    buffer.accept("kept", org_id="o", env_id="e", payload=b"y")
    redis_client.delete(entry_key(buffer, "gone"))

    # When popping
    entry = DrainProtocol(buffer).pop("o", "e")

    # Then the live entry comes out and no entry hash was made for the orphan
    assert entry is not None
    assert entry.message_id == "kept"
    assert not redis_client.exists(entry_key(buffer, "gone"))
    assert buffer.depth("o", "e") == 1


def test_pop_skips_references_whose_entry_is_not_queued(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # Given a stray second reference to an entry that is already DRAINING
    buffer.accept("m1", org_id="o", env_id="e", payload=b"x")
    assert DrainProtocol(buffer).pop("o", "e") is not None
    redis_client.rpush(buffer.keys.tenant("o", "e").queue, "m1")
    buffer.accept("m2", org_id="o", env_id="e", payload=b"y")

    # When popping, the DRAINING entry is not handed out twice
    entry = DrainProtocol(buffer).pop("o", "e")

    assert entry is not None
    assert entry.message_id == "m2"
    assert DrainProtocol(buffer).pop("o", "e") is None


def test_pop_skips_references_to_an_entry_of_another_env(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # A reference left in env a, while the id now lives (QUEUED) in env b.
    buffer.accept("m1", org_id="o", env_id="b", payload=b"x")
    redis_client.rpush(buffer.keys.tenant("o", "a").queue, "m1")

    assert DrainProtocol(buffer).pop("o", "a") is None
    entry = DrainProtocol(buffer).pop("o", "b")
    assert entry is not None
    assert entry.message_id == "m1"


def test_org_and_env_sets_follow_queued_work(buffer: MollifierBuffer) -> None:
    # accept records the env within its org, and the org
    buffer.accept("a1", org_id="a", env_id="prod", payload=b"")
    buffer.accept("a2", org_id="a", env_id="dev", payload=b"")
    buffer.accept("b1", org_id="b", env_id="prod", payload=b"")
    assert buffer.orgs() == ["a", "b"]
    assert buffer.envs("a") == ["dev", "prod"]
    assert buffer.envs("b") == ["prod"]

    # the pop that empties an env removes it; the org stays while it has another env
    assert DrainProtocol(buffer).pop("a", "dev") is not None
    assert buffer.envs("a") == ["prod"]
    assert buffer.orgs() == ["a", "b"]

    # the org leaves when its last env leaves
    assert DrainProtocol(buffer).pop("a", "prod") is not None
    assert buffer.envs("a") == []
    assert buffer.orgs() == ["b"]

    # requeue records both again
    assert DrainProtocol(buffer).requeue("a2")
    assert buffer.orgs() == ["a", "b"]
    assert buffer.envs("a") == ["dev"]

    # fail of a popped entry leaves the sets as they are; ack of a QUEUED entry prunes them
    assert DrainProtocol(buffer).pop("b", "prod") is not None
    assert DrainProtocol(buffer).fail("b1", code="E", message="m")
    assert buffer.orgs() == ["a"]
    DrainProtocol(buffer).ack("a2")
    assert buffer.orgs() == []
    assert buffer.envs("a") == []


def test_fail_of_a_queued_entry_prunes_the_sets(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="o", env_id="e", payload=b"")

    assert DrainProtocol(buffer).fail("m1", code="E", message="operator")

    assert buffer.orgs() == []
    assert buffer.envs("o") == []
    assert DrainProtocol(buffer).pop("o", "e") is None
    assert buffer.depth() == 0


def test_concurrent_pops_never_hand_out_one_entry_twice(redis_url: str, key_prefix: str) -> None:
    # Given 400 entries in one env and 16 threads, each with its own client, popping at once
    setup = MollifierBuffer(client_from_url(redis_url), key_prefix=key_prefix)
    for n in range(400):
        setup.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")
    setup.client.close()
    popped: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(16, timeout=60)  # one thread failing before it must not strand 15

    def drain(use_many: bool) -> None:
        client = client_from_url(redis_url, socket_timeout=5)
        buffer = MollifierBuffer(client, key_prefix=key_prefix)
        start.wait()
        try:
            while True:
                if use_many:
                    batch = [e.message_id for e in DrainProtocol(buffer).pop_many("o", "e", 7)]
                else:
                    one = DrainProtocol(buffer).pop("o", "e")
                    batch = [one.message_id] if one else []
                if not batch:
                    # Empty-handed after losing every race; done only once the queue is empty.
                    if not client.llen(buffer.keys.tenant("o", "e").queue):
                        return
                    continue
                with lock:
                    popped.extend(batch)
        finally:
            client.close()

    threads = [threading.Thread(target=drain, args=(n % 2 == 0,), daemon=True) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then every entry was handed out exactly once
    counts = Counter(popped)
    assert [mid for mid, n in counts.items() if n > 1] == []
    assert set(counts) == {f"m{n}" for n in range(400)}


def test_pop_many_after_losing_the_head_takes_the_entries_behind_it(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Two drainers race on one env: the loser still gets a batch in the same call (it peeks
    # past the ids the winner took).
    for n in range(20):
        buffer.accept(f"m{n}", org_id="o", env_id="e", payload=b"x")
    other = MollifierBuffer(redis_client, key_prefix=key_prefix)

    first = DrainProtocol(other).pop_many("o", "e", 5)
    second = DrainProtocol(buffer).pop_many("o", "e", 5)

    assert [e.message_id for e in first] == [f"m{n}" for n in range(5)]
    assert [e.message_id for e in second] == [f"m{n}" for n in range(5, 10)]


def test_oldest_created_at_is_that_of_the_head_queued_entry(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    assert buffer.oldest_created_at("o", "e") is None
    buffer.accept("gone", org_id="o", env_id="e", payload=b"")
    buffer.accept("m1", org_id="o", env_id="e", payload=b"")
    buffer.accept("m2", org_id="o", env_id="e", payload=b"")
    redis_client.delete(entry_key(buffer, "gone"))  # an orphan at the head is skipped

    entry = buffer.get("m1")
    assert entry is not None
    assert buffer.oldest_created_at("o", "e") == entry.created_at
    assert buffer.oldest_created_at("o", "other") is None


def test_org_window_reads_orgs_in_order_after_the_cursor_and_wraps(buffer: MollifierBuffer) -> None:
    assert DrainProtocol(buffer).org_window(None, 3) == []
    for org in ("d", "b", "e", "a", "c"):
        buffer.accept(f"m-{org}", org_id=org, env_id="e", payload=b"x")

    assert DrainProtocol(buffer).org_window(None, 3) == ["a", "b", "c"]
    assert DrainProtocol(buffer).org_window("a", 3) == ["b", "c", "d"]
    assert DrainProtocol(buffer).org_window("d", 3) == ["e", "a", "b"]
    assert DrainProtocol(buffer).org_window("e", 10) == ["a", "b", "c", "d", "e"]
    # A cursor on an org that has left still places the window where that org was.
    assert DrainProtocol(buffer).org_window("bb", 2) == ["c", "d"]
    with pytest.raises(ValueError, match="limit"):
        DrainProtocol(buffer).org_window(None, 0)


def test_a_peek_reads_the_ids_at_the_head_of_the_queue_in_order(buffer: MollifierBuffer) -> None:
    protocol = DrainProtocol(buffer)
    queue = buffer.keys.tenant("o", "e").queue
    assert protocol.peek(queue, 5) == []
    ids = ["m1", "odd:id/\u00fc", "x" * 300, "m4"]
    for message_id in ids:
        buffer.accept(message_id, org_id="o", env_id="e", payload=b"p")

    assert protocol.peek(queue, 3) == ids[:3]
    assert protocol.peek(queue, 10) == ids
    buffer.accept("other", org_id="o", env_id="f", payload=b"p")
    assert protocol.peek(buffer.keys.tenant("o", "f").queue, 10) == ["other"]


@pytest.mark.parametrize("cursor", [None, "a"])
def test_an_unreadable_org_set_fails_the_window_as_the_buffer_being_unavailable(
    buffer: MollifierBuffer, redis_client: redis.Redis, cursor: str | None
) -> None:
    # Given the orgs' sorted set replaced by something else (every group's, with slot groups)
    for group in buffer.keys.groups:
        redis_client.set(group.orgs, "not a sorted set")

    # Then reading the window raises what every buffer call raises for Redis errors
    with pytest.raises(BufferUnavailableError):
        DrainProtocol(buffer).org_window(cursor, 3)


def test_envs_of_reads_each_orgs_envs_and_none_for_a_bad_key_without_losing_the_rest(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # Given orgs whose ids are escaped in key names, with one to three envs each, and one org
    # whose set of envs holds something else
    orgs = ["a", "org:1", "b c", "%41", "\u00fc", "bad"]
    for n, org in enumerate(orgs):
        for env in ("prod", "dev", "qa")[: n % 3 + 1]:
            buffer.accept(f"m-{n}-{env}", org_id=org, env_id=env, payload=b"x")
    envs_key = buffer.keys.envs("bad")
    redis_client.delete(envs_key)
    redis_client.set(envs_key, "not a set")
    protocol = DrainProtocol(buffer)

    # When a drainer reads them (its window first)
    window = protocol.org_window(None, 10)
    envs = dict(zip(window, protocol.envs_of(window), strict=True))

    # Then each org has its envs, sorted, the bad key None, the others unharmed by it
    assert sorted(window) == sorted(orgs)
    assert envs == {
        "a": ["prod"],
        "org:1": ["dev", "prod"],
        "b c": ["dev", "prod", "qa"],
        "%41": ["prod"],
        "\u00fc": ["dev", "prod"],
        "bad": None,
    }
    assert protocol.envs_of([]) == []
    assert protocol.envs_of(["gone"]) == [[]]
