"""The buffer on a real 3-primary Redis-compatible cluster, with the slot-group layout.

Whatever ``MOLLIFIER_TEST_CLUSTER`` says, these tests use the session's cluster
(``redis_cluster``): every script must touch one slot (the server refuses CROSSSLOT, and so does
redis-py's cluster client), the groups must spread over every primary, and the middleware and a
real drainer must deliver every diverted message exactly once through cluster clients.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from redis.cluster import RedisCluster
from redis.crc import key_slot

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer, cluster_io
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.buffer.keys import parse_tenant_member
from dramatiq_mollifier.buffer.listing import ListingScripts, dwell_snapshot
from dramatiq_mollifier.embedded import EmbeddedCluster
from dramatiq_mollifier.errors import BufferUnavailableError

from .conftest import flush_cluster

ORG, ENV = "{acme}:x%y ü", "{prod}:\n"
AWKWARD_IDS = ["id{1}:ü", "{}", "a:b:c", "ü" * 40, "%7B"]


@pytest.fixture
def cluster(redis_cluster: EmbeddedCluster) -> EmbeddedCluster:
    flush_cluster(redis_cluster)
    return redis_cluster


@pytest.fixture
def cluster_client(cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    client: RedisCluster = client_from_url(cluster.url, protocol=3, socket_timeout=5)
    yield client
    client.close()


class SlotSpy:
    """Records the slots of the keys of every script call, whichever way it goes to the cluster:
    redis-py's cluster client (and its pipeline), or straight to the node (``cluster_io``)."""

    def __init__(self, client: RedisCluster, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[set[int]] = []
        original = client.execute_command
        original_pipeline = client.pipeline
        run_one, run_batch = cluster_io.run_one, cluster_io.run_batch

        def execute_command(*args: Any, **kwargs: Any) -> Any:
            self._record(args)
            return original(*args, **kwargs)

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = original_pipeline(*args, **kwargs)
            pipe_execute = pipe.execute_command

            def pipe_command(*cargs: Any, **ckwargs: Any) -> Any:
                self._record(cargs)
                return pipe_execute(*cargs, **ckwargs)

            pipe.execute_command = pipe_command
            return pipe

        def spy_one(cluster: Any, execute: Any, args: Any) -> Any:
            self._record(tuple(args))
            return run_one(cluster, execute, args)

        def spy_batch(cluster: Any, calls: Any) -> Any:
            for call in calls:
                self._record(("EVALSHA", *call))
            return run_batch(cluster, calls)

        monkeypatch.setattr(client, "execute_command", execute_command)
        monkeypatch.setattr(client, "pipeline", pipeline)
        monkeypatch.setattr(cluster_io, "run_one", spy_one)
        monkeypatch.setattr(cluster_io, "run_batch", spy_batch)

    def _record(self, args: tuple[Any, ...]) -> None:
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0]) if args else ""
        if name.upper() in ("EVALSHA", "EVAL"):
            keys = args[3 : 3 + int(args[2])]
            self.calls.append({key_slot(k if isinstance(k, bytes) else str(k).encode()) for k in keys})


def test_every_buffer_operation_touches_one_slot_with_awkward_ids(
    cluster_client: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An awkward prefix, but no brace: braces are refused with slot groups (test_redis_urls.py)
    buffer = MollifierBuffer(cluster_client, key_prefix="m:ü.x:")
    assert buffer.slot_groups == 16
    spy = SlotSpy(cluster_client, monkeypatch)
    drain = DrainProtocol(buffer)
    for message_id in AWKWARD_IDS:
        assert buffer.accept(message_id, org_id=ORG, env_id=ENV, payload=b"p")
    assert buffer.accept_capped(
        "capped{1}", org_id=ORG, env_id=ENV, payload=b"p", env_cap=1, org_cap=None, dead_letter=True
    ) in (4, 5)
    decision, accepted = buffer.evaluate_trip_and_accept(
        "fused:{id}", org_id=ORG, env_id=ENV, payload=b"p", window_ms=1000, threshold=0, hold_ms=1000
    )
    assert decision.tripped and accepted
    assert buffer.evaluate_trip(ORG, ENV, window_ms=1000, threshold=0, hold_ms=1000).tripped
    _, envs = buffer.fold_trip_counts(
        [(ORG, ENV, 3), ("other{org}", "e", 1), (ORG, "env2", 2)], window_ms=1000, threshold=1, hold_ms=1000
    )
    assert [window.count for window in envs][1:] == [1, 2]
    assert buffer.tripped()[0] == (ORG, ENV) or (ORG, ENV) in buffer.tripped()
    popped = drain.pop_many(ORG, ENV, 3)
    assert [entry.message_id for entry in popped] == AWKWARD_IDS[:3]
    assert drain.renew(popped) == []
    assert drain.requeue(popped[0].message_id, org_id=ORG, env_id=ENV, owner=popped[0].lease_owner)
    assert drain.fail(popped[1].message_id, code="E", message="m", owner=popped[1].lease_owner)
    assert drain.ack_entries([popped[2]]).removed == 1
    assert drain.release(drain.pop_many(ORG, ENV, 1)) == 1
    # Operations by id alone find the entry in its group.
    assert buffer.get(popped[1].message_id) is not None
    assert buffer.retry_failed(popped[1].message_id)
    assert drain.ack(popped[0].message_id) == 1
    assert buffer.controls.lookup("fused:{id}").state == "queued"
    assert buffer.controls.cancel(["fused:{id}"]) == 1
    assert buffer.depth() == buffer.depth(ORG) == len(AWKWARD_IDS) - 2
    assert drain.reclaim().requeued == []
    assert buffer.failed_counts() == {(ORG, ENV): 1}
    assert buffer.purge_failed() == 1
    # The listing: pages by every sort (reading heads and repairing entries), then a rebuild of
    # the org's group after "older code" wrote it (reindex_env.lua over every env of the group).
    group = buffer.keys.group_of(ORG)
    cluster_client.delete(*group.index_keys)
    cluster_client.hdel(group.depth, "indexed")
    for sort in ("org", "depth", "oldest"):
        rows = buffer.controls.tenants(sort=sort, filter=ORG).rows
        assert (ORG, ENV) in [(row.org_id, row.env_id) for row in rows]
    assert len(spy.calls) >= 25, spy.calls
    assert all(len(slots) == 1 for slots in spy.calls), [s for s in spy.calls if len(s) > 1]


def test_keys_spread_over_every_primary(cluster: EmbeddedCluster, cluster_client: RedisCluster) -> None:
    buffer = MollifierBuffer(cluster_client)
    for n in range(300):
        assert buffer.accept(f"m{n}", org_id=f"org-{n}", env_id="prod", payload=b"x")
    sizes = []
    for node in cluster.primaries:
        client = cluster.client(node)
        sizes.append(int(client.dbsize()))
        client.close()
    assert all(size > 0 for size in sizes), sizes
    # Equal slot ranges get about equal shares of the 16 groups: no primary holds most keys.
    assert max(sizes) / sum(sizes) < 0.55, sizes
    groups = Counter(buffer.keys.group_of(f"org-{n}").prefix for n in range(300))
    assert len(groups) == 16


def test_the_middleware_diverts_and_a_real_drainer_delivers_each_message_once(
    cluster: EmbeddedCluster,
) -> None:
    broker = StubBroker()
    broker.emit_after("process_boot")
    settings = MollifierSettings(
        enabled=True,
        enabled_orgs={"*"},
        redis_url=cluster.url,
        trip_threshold=5,
        trip_window_ms=10_000,
        trip_evaluator="exact",
        drain_idle_wait_ms=0,
        drain_poll_interval_ms=20,
    )
    mollifier = Mollifier(settings)
    assert mollifier.buffer.slot_groups == 16 and isinstance(mollifier.buffer.client, RedisCluster)
    broker.add_middleware(mollifier)
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker)
    def ingest(n: int) -> None:
        with lock:
            seen.append(n)

    orgs = [f"org-{i}" for i in range(8)]
    total = 0
    for org in orgs:
        for _ in range(40):
            ingest.send_with_options(args=(total,), org_id=org, env_id="prod")
            total += 1
    assert mollifier.buffer.depth() == total - 5 * len(orgs)
    worker = dramatiq.Worker(broker, worker_threads=4)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(seen) < total or mollifier.buffer.depth()):
            time.sleep(0.05)
        broker.join(ingest.queue_name, timeout=10_000)
    finally:
        worker.stop()
        broker.close()
    assert sorted(seen) == list(range(total)), Counter(seen).most_common(3)
    assert mollifier.buffer.depth() == 0


def test_a_process_with_another_group_count_refuses_and_fails_open(
    cluster: EmbeddedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    first = Mollifier(MollifierSettings(enabled=True, enabled_orgs={"*"}, redis_url=cluster.url))
    first.layout_check.join(5)
    assert first._enabled
    broker = StubBroker()
    settings = MollifierSettings(
        enabled=True, enabled_orgs={"*"}, redis_url=cluster.url, slot_groups=8, trip_threshold=0,
        trip_evaluator="exact",
    )  # fmt: skip
    with caplog.at_level(logging.ERROR):
        other = Mollifier(settings)
        other.layout_check.join(5)
    broker.add_middleware(other)

    @dramatiq.actor(broker=broker)
    def ingest(n: int) -> None: ...

    for n in range(5):
        message = ingest.send_with_options(args=(n,), org_id="acme", env_id="prod")
        assert not message.options.get("mollified")
    assert broker.queues[ingest.queue_name].qsize() == 5
    assert other.buffer.depth() == 0
    assert any("mollifier.layout_mismatch" in record.message for record in caplog.records)
    assert "slot_groups=16" in caplog.text and "slot_groups=8" in caplog.text
    broker.close()


def test_cluster_errors_surface_as_the_buffer_error(cluster_client: RedisCluster) -> None:
    buffer = MollifierBuffer(cluster_client, key_prefix="wrongtype")
    t = buffer.keys.tenant("acme", "prod")
    cluster_client.set(t.queue, "not a list")
    with pytest.raises(BufferUnavailableError):
        buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")


def test_the_tenant_listing_and_the_fleet_gauges_read_every_group(cluster_client: RedisCluster) -> None:
    buffer = MollifierBuffer(cluster_client)
    orgs = [f"org-{n}" for n in range(12)]
    assert len({buffer.keys.group_of(org).prefix for org in orgs}) > 3  # several groups, several slots
    for n, org in enumerate(orgs):
        for i in range(n + 1):
            assert buffer.accept(f"{org}-{i}", org_id=org, env_id="prod", payload=b"x")
    assert buffer.evaluate_trip("org-3", "prod", window_ms=10_000, threshold=0, hold_ms=10_000).tripped
    page = buffer.controls.tenants(sort="depth")
    assert [(row.org_id, row.depth) for row in page.rows] == [
        (org, n + 1) for n, org in reversed(list(enumerate(orgs)))
    ]
    assert all(row.oldest_age_ms is not None for row in page.rows)
    assert [row.org_id for row in page.rows if row.tripped] == ["org-3"]
    total, oldest_ms, top, dead = dwell_snapshot(ListingScripts(cluster_client), buffer.keys, 3)
    assert (total, dead, len(top)) == (sum(range(1, 13)), 0, 3)
    assert oldest_ms >= 0


def test_the_listing_indexes_are_per_group_and_a_page_merges_them(cluster_client: RedisCluster) -> None:
    buffer, drain = MollifierBuffer(cluster_client), DrainProtocol(MollifierBuffer(cluster_client))
    tenants = [(f"org-{n:02d}", env) for n in range(20) for env in ("a", "b")]
    depths = {}
    for n, (org, env) in enumerate(tenants):
        depths[org, env] = 1 + n % 4
        for i in range(depths[org, env]):
            assert buffer.accept(f"{org}-{env}-{i}", org_id=org, env_id=env, payload=b"x")
    drain.pop_many("org-03", "b", 1)  # DRAINING still counts: listed with its depth
    groups = {buffer.keys.group_of(org).prefix for org, _ in tenants}
    assert len(groups) > 5
    # Each group's three indexes share its depth hash's slot and list only its own orgs' envs.
    listed = []
    for group in buffer.keys.groups:
        assert len({key_slot(name.encode()) for name in (group.depth, *group.index_keys)}) == 1
        for member in cluster_client.zrange(group.index_tenants, 0, -1):
            org, env = parse_tenant_member(member)
            assert buffer.keys.group_of(org) is group
            listed.append((org, env))
    assert sorted(listed) == sorted(tenants)
    # Pages across the groups: by org, by depth (ties by org and env), at several offsets.
    by_org = sorted(tenants)
    by_depth = sorted(tenants, key=lambda t: (-depths[t], t))
    for sort, expected in (("org", by_org), ("depth", by_depth)):
        for offset in (0, 7, 33, 38):
            page = buffer.controls.tenants(offset=offset, limit=5, sort=sort)
            assert [(r.org_id, r.env_id) for r in page.rows] == expected[offset : offset + 5], (sort, offset)
            assert page.total == len(tenants)
            assert [r.depth for r in page.rows] == [depths[r.org_id, r.env_id] for r in page.rows]
