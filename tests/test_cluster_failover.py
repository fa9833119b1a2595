"""The buffer on a cluster whose topology changes under a running drainer: a primary killed and
replaced by its replica, a busy group's slot migrated to another primary.

Both use clusters of their own (started and stopped here), since they break them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.drain.connections import drain_client
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.embedded import EmbeddedCluster
from dramatiq_mollifier.errors import BufferUnavailableError
from dramatiq_mollifier.models import BufferEntry

from .servers import unavailable


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; a buffer error (the cluster failing over) counts as no."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except BufferUnavailableError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def cluster_with_replicas(redis_binary: str) -> Iterator[EmbeddedCluster]:
    try:
        cluster = EmbeddedCluster(redis_binary, primaries=3, replicas=1, node_timeout_ms=1000).start()
    except RuntimeError as exc:
        unavailable(f"could not start a cluster with replicas: {exc}")
        raise AssertionError("unreachable") from exc
    yield cluster
    cluster.close()


class Recorder:
    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, entry: BufferEntry) -> None:
        time.sleep(0.002)  # a broker write's worth: the drain is still under way at the kill
        with self.lock:
            self.seen[entry.message_id] += 1


def start_drainer(client: RedisCluster) -> tuple[MollifierDrainer, Recorder]:
    recorder = Recorder()
    buffer = MollifierBuffer(drain_client(client, socket_timeout_ms=2000), lease_ms=3000)
    drainer = MollifierDrainer(
        buffer, recorder, concurrency=4, batch_size=20, poll_interval_ms=20, idle_wait_ms=0
    )
    drainer.start()
    return drainer, recorder


def accept_all(buffer: MollifierBuffer, count: int) -> list[str]:
    ids = [f"m{n}" for n in range(count)]
    for n, message_id in enumerate(ids):
        assert buffer.accept(message_id, org_id=f"org{n % 24}", env_id="prod", payload=b"x")
    return ids


def test_a_primary_killed_mid_drain_is_replaced_by_its_replica_and_nothing_is_lost(
    cluster_with_replicas: EmbeddedCluster,
) -> None:
    cluster = cluster_with_replicas
    client: RedisCluster = client_from_url(cluster.url, socket_timeout=2)
    buffer = MollifierBuffer(client)
    ids = accept_all(buffer, 1500)
    for node in cluster.primaries:  # replication is asynchronous: what was accepted is on a replica
        plain = cluster.client(node)
        assert int(plain.execute_command("WAIT", 1, 5000)) >= 1
        plain.close()
    drainer, recorder = start_drainer(client)
    try:
        wait_for(lambda: sum(recorder.seen.values()) >= 100, 30, "the drain to start")
        victim = cluster.primaries[1]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.stop()
        wait_for(lambda: set(recorder.seen) >= set(ids), 90, "every accepted message to be drained")
        wait_for(lambda: buffer.depth() == 0, 30, "the buffer to empty")
    finally:
        drainer.stop(5000)
        client.close()
    assert set(recorder.seen) == set(ids)
    # At least once: only entries in flight at the kill may come twice.
    assert sum(recorder.seen.values()) - len(ids) <= 4 * 20 * 2


def test_a_busy_groups_slot_migrated_mid_drain_loses_and_duplicates_nothing(redis_binary: str) -> None:
    with EmbeddedCluster(redis_binary, primaries=2) as cluster:
        client: RedisCluster = client_from_url(cluster.url, socket_timeout=5)
        buffer = MollifierBuffer(client)
        ids = accept_all(buffer, 1200)
        group = buffer.keys.group_of("org0")
        slot = key_slot(group.orgs.encode())
        source_node = client.nodes_manager.get_node_from_slot(slot)
        nodes = {(node.port): node for node in cluster.primaries}
        source = cluster.client(nodes[source_node.port])
        target = cluster.client(next(node for port, node in nodes.items() if port != source_node.port))
        drainer, recorder = start_drainer(client)
        try:
            wait_for(lambda: sum(recorder.seen.values()) >= 50, 30, "the drain to start")
            source_id = source.execute_command("CLUSTER MYID")
            target_id = target.execute_command("CLUSTER MYID")
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            target_port = int(target.connection_pool.connection_kwargs["port"])
            while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, 50):
                source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
                time.sleep(0.01)  # let the drainer run into ASK redirections
            for plain in (source, target):
                plain.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            wait_for(lambda: set(recorder.seen) >= set(ids), 60, "every message to be drained")
            wait_for(lambda: buffer.depth() == 0, 30, "the buffer to empty")
        finally:
            drainer.stop(5000)
            source.close()
            target.close()
            client.close()
        assert set(recorder.seen) == set(ids)
        assert max(recorder.seen.values()) == 1, recorder.seen.most_common(3)
