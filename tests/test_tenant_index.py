"""The tenant listing's indexes against the truth (depth counters, queue heads) after every
buffer operation, their repair, their rebuild after code older than them wrote the buffer, and
pages read from them against a listing computed from the truth."""

from __future__ import annotations

import itertools

import pytest
import redis

from dramatiq_mollifier import MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.buffer.keys import NO_HEAD, parse_tenant_member, parse_tenant_tag, tenant_member
from dramatiq_mollifier.buffer.listing import ListingScripts, env_depths
from dramatiq_mollifier.buffer.tenant_index import ensure_index

_Key = tuple[str, str]

# Awkward ids: a NUL byte, the tag's own ':' syntax, non-ASCII, an org that prefixes another.
ODD = ("a\0b:c", "prod")
ACME_DEV = ("acme", "dév")
ACME_PROD = ("acme", "prod")
ACME2 = ("acme2", "x")


@pytest.fixture(params=[None, 8], ids=["default-layout", "8-slot-groups"])
def buffer(request: pytest.FixtureRequest, redis_client: redis.Redis, key_prefix: str) -> MollifierBuffer:
    """Every test twice: the client's default layout (one group on one server, 16 on a
    cluster), and 8 slot groups (each group's own indexes, pages merged over the groups)."""
    return MollifierBuffer(redis_client, key_prefix=key_prefix, slot_groups=request.param)


def truth(client: redis.Redis, buffer: MollifierBuffer) -> tuple[dict[_Key, int], dict[_Key, int]]:
    """Each env's depth (from the counters) and its queue head's created_at_ms (NO_HEAD when
    none, or its entry is gone), computed without the indexes."""
    depths: dict[_Key, int] = {}
    for group in buffer.keys.groups:
        for name, value in client.hgetall(group.depth).items():
            if name.startswith(b"env:") and int(value) > 0:
                depths[parse_tenant_tag(name[4:])] = int(value)
    heads: dict[_Key, int] = {}
    for org, env in depths:
        t = buffer.keys.tenant(org, env)
        head = client.lindex(t.queue, 0)
        created = client.hget(t.space.entry(head.decode()), "created_at_ms") if head is not None else None
        heads[org, env] = int(created) if created is not None else NO_HEAD
    return depths, heads


def indexes(client: redis.Redis, buffer: MollifierBuffer) -> list[dict[_Key, float]]:
    """The three indexes, every group's merged; each env listed only in its own org's group."""
    merged: list[dict[_Key, float]] = [{}, {}, {}]
    for group in buffer.keys.groups:
        for index, name in zip(merged, group.index_keys, strict=True):
            for m, s in client.zrange(name, 0, -1, withscores=True):
                tenant = parse_tenant_member(m)
                assert buffer.keys.group_of(tenant[0]) is group, (tenant, name)
                index[tenant] = s
    return merged


def check(client: redis.Redis, buffer: MollifierBuffer, *, unknown: set[_Key] = frozenset()) -> None:  # type: ignore[assignment]
    """The indexes hold exactly the truth; envs in ``unknown`` may score 0 by age ("not known")."""
    depths, heads = truth(client, buffer)
    by_org, by_depth, by_oldest = indexes(client, buffer)
    assert by_org == {t: 0.0 for t in depths}
    assert by_depth == {t: float(-d) for t, d in depths.items()}
    assert set(by_oldest) == set(depths)
    for t, score in by_oldest.items():
        assert score == heads[t] or (t in unknown and score == 0), (t, score, heads[t])
    for group in buffer.keys.groups:
        total, indexed = client.hmget(group.depth, ["total", "indexed"])
        assert total == indexed, group.prefix


def accept(buffer: MollifierBuffer, tenant: _Key, *ids: str) -> None:
    for message_id in ids:
        assert buffer.accept(message_id, org_id=tenant[0], env_id=tenant[1], payload=b"x")


def test_the_indexes_follow_accepts_pops_and_settling(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    client, drain = redis_client, DrainProtocol(buffer)
    check(client, buffer)
    accept(buffer, ODD, *(f"o{n}" for n in range(8)))
    accept(buffer, ACME_DEV, "d1", "d2")
    check(client, buffer)
    buffer.evaluate_trip_and_accept(
        "t1", org_id="acme", env_id="prod", payload=b"x", window_ms=60_000, threshold=0, hold_ms=60_000
    )
    check(client, buffer)
    assert (
        buffer.accept_capped(
            "c1", org_id="acme", env_id="prod", payload=b"x", env_cap=2, org_cap=None, dead_letter=True
        )
        == 1
    )
    assert (
        buffer.accept_capped(
            "c2", org_id="acme", env_id="prod", payload=b"x", env_cap=2, org_cap=None, dead_letter=True
        )
        == 4
    )  # over the cap: a dead letter, not counted
    check(client, buffer)

    popped = drain.pop_many(*ODD, 2)
    check(client, buffer)  # the new head was peeked: known
    assert drain.ack(popped[0].message_id, owner=popped[0].lease_owner) == 1
    check(client, buffer)
    assert drain.ack_entries([popped[1]]).removed == 1
    check(client, buffer)

    (first,) = drain.pop_many(*ODD, 1)
    assert drain.requeue(first.message_id, owner=first.lease_owner)  # to the tail
    check(client, buffer)
    (first,) = drain.pop_many(*ODD, 1)
    assert drain.release([first]) == 1  # back at the head
    check(client, buffer)
    (first,) = drain.pop_many(*ODD, 1)
    assert drain.fail(first.message_id, code="E", message="m", owner=first.lease_owner)
    check(client, buffer)
    assert buffer.retry_failed(first.message_id)
    check(client, buffer)


def test_the_indexes_follow_an_env_drained_and_dead_lettered(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    client, drain = redis_client, DrainProtocol(buffer)
    accept(buffer, ACME_DEV, "d1", "d2")
    accept(buffer, ACME_PROD, "p1")
    # Every entry of one env drained, then failed: the env leaves every index.
    drained = drain.pop_many(*ACME_DEV, 10)
    check(client, buffer)  # all DRAINING: listed, nothing queued
    for entry in drained:
        assert drain.fail(entry.message_id, code="E", message="m", owner=entry.lease_owner)
    check(client, buffer)
    assert ACME_DEV not in indexes(client, buffer)[0]
    assert buffer.purge_failed("acme", "dév") == 2
    check(client, buffer)


def test_the_indexes_follow_reclaims_and_cancels(buffer: MollifierBuffer, redis_client: redis.Redis) -> None:
    client, drain = redis_client, DrainProtocol(buffer)
    accept(buffer, ODD, *(f"o{n}" for n in range(5)))
    accept(buffer, ACME_PROD, *(f"p{n}" for n in range(5)))
    check(client, buffer)
    # Reclaim: back in the queue, then dead-lettered when its leases expired too often.
    (late,) = drain.pop_many(*ACME_PROD, 1)
    client.zadd(buffer.keys.group_of("acme").leases, {late.message_id: 0})
    assert drain.reclaim().requeued == [late.message_id]
    check(client, buffer)
    (late,) = drain.pop_many(*ACME_PROD, 1)
    client.zadd(buffer.keys.group_of("acme").leases, {late.message_id: 0})
    assert drain.reclaim(max_expiries=1).dead_lettered == [late.message_id]
    check(client, buffer)
    # A DRAINING entry deleted by hand (evicted): reclaim gives its count back.
    (lost,) = drain.pop_many(*ACME_PROD, 1)
    client.delete(buffer.keys.tenant(*ACME_PROD).space.entry(lost.message_id))
    client.zadd(buffer.keys.group_of("acme").leases, {lost.message_id: 0})
    drain.reclaim()
    check(client, buffer)

    # Cancel: behind the head, a DRAINING one, then the head itself (the next head's entry was
    # not given to the script: "not known", repaired by the next listing by age).
    queue = buffer.keys.tenant(*ODD).queue
    ids = [i.decode() for i in client.lrange(queue, 0, -1)]
    assert buffer.controls.cancel([ids[-1]]) == 1
    check(client, buffer)
    (draining,) = drain.pop_many(*ODD, 1)
    assert buffer.controls.cancel([draining.message_id]) == 1
    check(client, buffer)
    head = client.lindex(queue, 0).decode()
    assert buffer.controls.cancel([head]) == 1
    check(client, buffer, unknown={ODD})
    assert indexes(client, buffer)[2][ODD] == 0  # sorts first, never later than the truth
    buffer.controls.tenants(sort="oldest")
    check(client, buffer)


def test_the_indexes_follow_expiry_pauses_and_a_full_drain(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    client, drain = redis_client, DrainProtocol(buffer)
    accept(buffer, ODD, "o1", "o2")
    accept(buffer, ACME_PROD, "p1")
    # An entry that expires at the head: its old score is earlier than the truth (no head), and
    # the listing by age repairs it when it shows it.
    accept(buffer, ACME2, "e1", "e2")
    client.delete(buffer.keys.tenant(*ACME2).space.entry("e1"))
    _, heads = truth(client, buffer)
    assert heads[ACME2] == NO_HEAD and indexes(client, buffer)[2][ACME2] < NO_HEAD
    page = buffer.controls.tenants(sort="oldest")
    check(client, buffer)
    assert [(r.org_id, r.env_id) for r in page.rows][-1] == ACME2
    # Cancelling the whole env (its expired reference too) empties it from every index.
    assert buffer.controls.cancel_tenant(*ACME2) == 1
    check(client, buffer)
    assert ACME2 not in indexes(client, buffer)[0]

    # Pausing changes no index: a paused env without work is listed from the rules.
    buffer.controls.pause("idle", "env")
    check(client, buffer)
    assert ("idle", "env") in [(r.org_id, r.env_id) for r in buffer.controls.tenants().rows]

    # Drain everything: nothing left in any index.
    for tenant in (ODD, ACME_PROD):
        while entries := drain.pop_many(*tenant, 50):
            drain.ack_entries(entries)
    check(client, buffer)
    assert not any(client.exists(name) for group in buffer.keys.groups for name in group.index_keys)


def test_a_buffer_written_without_the_indexes_is_rebuilt_once(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    for n in range(30):
        accept(buffer, (f"org-{n:02d}", ("prod", "dev")[n % 2]), *(f"m-{n}-{k}" for k in range(1 + n % 4)))
    DrainProtocol(buffer).pop_many("org-03", "dev", 2)
    # As code older than the indexes leaves it: no index, no 'indexed' count.
    for group in buffer.keys.groups:
        redis_client.delete(*group.index_keys)
        redis_client.hdel(group.depth, "indexed")
    scripts = ListingScripts(redis_client)
    assert ensure_index(scripts, buffer.keys, lambda group: env_depths(scripts, group))
    check(redis_client, buffer)

    controls = buffer.controls
    page = controls.tenants(sort="depth", limit=5)
    assert page.total == 30
    assert [r.depth for r in page.rows] == [4] * 5
    check(redis_client, buffer)
    # Consistent again: no rebuild. An old process writing again (total moves alone): rebuilt,
    # but not more often than REBUILD_INTERVAL_MS by one process.
    assert not ensure_index(scripts, buffer.keys, lambda group: pytest.fail("no rebuild"))
    stale = buffer.keys.group_of("org-07")
    redis_client.hincrby(stale.depth, "total", 1)
    assert not ensure_index(scripts, buffer.keys, lambda group: pytest.fail("rebuilt too soon"))
    scripts.rebuilt_at_ms.clear()
    rebuilt: list[str] = []
    assert ensure_index(scripts, buffer.keys, lambda group: rebuilt.append(group.prefix) or {})
    assert rebuilt == [stale.prefix]  # only the group whose counters disagree


def test_a_row_whose_index_entry_is_wrong_is_shown_true_and_repaired(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    accept(buffer, ACME_PROD, "a", "b", "c")
    accept(buffer, ACME_DEV, "d")
    redis_client.zadd(buffer.keys.group_of("acme").index_depth, {tenant_member(*ACME_DEV): -50})
    page = buffer.controls.tenants(sort="depth")
    assert [(r.org_id, r.env_id, r.depth) for r in page.rows] == [("acme", "prod", 3), ("acme", "dév", 1)]
    check(redis_client, buffer)


def reference(
    depths: dict[_Key, int], heads: dict[_Key, int], ruled: set[_Key], sort: str, q: str | None
) -> list[_Key]:
    """The listing's order computed from the truth: envs with work, then ruled envs without."""

    def matches(t: _Key) -> bool:
        if not q:
            return True
        org, slash, env = q.partition("/")
        return t[0] == org and t[1].startswith(env) if slash else t[0].startswith(q)

    listed = sorted(t for t in depths if matches(t))
    idle = sorted(t for t in ruled - set(depths) if matches(t))
    if sort == "org":
        return sorted(listed + idle)
    if sort == "depth":
        return sorted(listed, key=lambda t: (-depths[t], t)) + idle
    return sorted(listed, key=lambda t: (heads[t], t)) + idle


def test_pages_match_a_listing_computed_from_the_truth(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    drain = DrainProtocol(buffer)
    for n in range(40):
        tenant = (f"org-{n % 13:02d}", f"env-{n % 3}{'é' if n % 5 == 0 else ''}")
        accept(buffer, tenant, *(f"p-{n}-{k}" for k in range(1 + n * 7 % 5)))
    for n in range(0, 13, 4):
        drain.pop_many(f"org-{n:02d}", "env-0", 1 + n % 3)  # some DRAINING, some envs all DRAINING
    controls = buffer.controls
    ruled = {("org-00", "zz-idle"), ("org-05", "aa-idle"), ("zz", "idle"), ("org-03", "env-1")}
    for org, env in sorted(ruled)[:2]:
        controls.pause(org, env)
    for org, env in sorted(ruled)[2:]:
        controls.set_cap(org, env, limit=5)
    check(redis_client, buffer)
    depths, heads = truth(redis_client, buffer)
    if buffer.slot_groups:  # the envs are spread over several groups: pages are merges
        assert len({buffer.keys.group_of(org).prefix for org, _ in depths}) >= 5
    settings = MollifierSettings(key_prefix=key_prefix)
    for sort, q in itertools.product(
        ("org", "depth", "oldest"), (None, "org-0", "org-05", "org-01/env-2", "z")
    ):
        expected = reference(depths, heads, ruled, sort, q)
        for offset, limit in ((0, 7), (5, 7), (14, 7), (len(expected) - 3, 7), (0, 100)):
            page = controls.tenants(offset=max(offset, 0), limit=limit, filter=q, sort=sort)
            got = [(r.org_id, r.env_id) for r in page.rows]
            assert got == expected[max(offset, 0) : max(offset, 0) + limit], (sort, q, offset)
            assert page.total == len(expected)
            for row in page.rows:
                assert row.depth == depths.get((row.org_id, row.env_id), 0)
    assert settings.key_prefix == key_prefix
