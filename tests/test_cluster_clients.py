"""The cluster client a URL gives closes what it opened: redis-py's ``RedisCluster.close()`` leaves
each node's pooled connections open for the garbage collector (which, in the test suite, closed
them at random moments and failed whichever test ran, with a ResourceWarning)."""

from __future__ import annotations

import gc
import warnings

import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from redis.exceptions import RedisClusterException

from dramatiq_mollifier import Mollifier, MollifierConfigurationError, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.buffer.cluster_client import ClusterClient
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.buffer.lookups import BoundedLookupConnection
from dramatiq_mollifier.embedded import EmbeddedCluster, EmbeddedRedis, free_port


def open_connections(cluster: EmbeddedCluster, name: str) -> int:
    """Connections named ``name`` on the primaries (other tests' background reads may come and go)."""
    total = 0
    for node in cluster.primaries:
        client = cluster.client(node)
        try:
            total += sum(1 for entry in client.client_list() if entry.get("name") == name)
        finally:
            client.close()
    return total


def test_closing_a_cluster_client_closes_every_node_connection(redis_cluster: EmbeddedCluster) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = client_from_url(redis_cluster.url, socket_timeout=5, client_name="closing-check")
        assert isinstance(client, ClusterClient)
        buffer = MollifierBuffer(client, key_prefix="closing")
        for n in range(50):  # orgs on every primary
            buffer.accept(f"m{n}", org_id=f"org{n}", env_id="prod", payload=b"x")
        assert DrainProtocol(buffer).pop_many("org1", "prod", 10)
        assert open_connections(redis_cluster, "closing-check") >= len(redis_cluster.primaries)

        client.close()

        assert open_connections(redis_cluster, "closing-check") == 0
        del client, buffer
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_cluster_url_naming_its_seed_by_name_works_and_bounds_every_nodes_lookups(
    redis_cluster: EmbeddedCluster,
) -> None:
    # The seed by host name (the nodes announce addresses): each node's connections look their
    # host up within the connect timeout (tests/test_host_lookups.py shows what that bounds).
    url = redis_cluster.url.replace("127.0.0.1", "localhost", 1)
    client = client_from_url(url, socket_timeout=2, socket_connect_timeout=0.5)
    try:
        buffer = MollifierBuffer(client, key_prefix="by-name")
        for n in range(20):  # orgs on every primary
            assert buffer.accept(f"m{n}", org_id=f"org{n}", env_id="prod", payload=b"x")
        pools = [node.redis_connection.connection_pool for node in client.get_nodes()]
        assert len(pools) >= len(redis_cluster.primaries)
        assert {pool.connection_class for pool in pools} == {BoundedLookupConnection}
    finally:
        client.close()


def test_a_cluster_url_with_several_seeds_starts_while_the_first_is_down(
    redis_cluster: EmbeddedCluster,
) -> None:
    # A URL named one seed: with it down, Mollifier() raised at startup though the cluster ran.
    down, up = free_port(), redis_cluster.nodes[1].port
    url = f"redis+cluster://127.0.0.1:{down},127.0.0.1:{up}/0"
    assert MollifierSettings(redis_url=url).effective_slot_groups == 16
    buffer = MollifierBuffer.from_url(url, key_prefix="several-seeds")  # the cluster is shared
    try:
        assert buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
        assert buffer.depth() == 1
    finally:
        buffer.client.close()


def test_a_cluster_url_naming_a_single_server_is_refused_naming_the_setting(
    disposable_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server outside cluster mode behind redis+cluster:// raised redis-py's RedisClusterException.
    monkeypatch.setenv("MOLLIFIER_REDIS_URL", disposable_redis.url.replace("redis://", "redis+cluster://"))
    broker = StubBroker()
    with pytest.raises(MollifierConfigurationError, match=r"MOLLIFIER_REDIS_URL.*outside Redis Cluster"):
        broker.add_middleware(Mollifier())
    broker.close()


def test_a_cluster_url_whose_seeds_are_all_down_is_an_outage_not_a_mistake() -> None:
    # The client starts unconnected (tests/test_cluster_outage_at_start.py); each use is an
    # outage, which the send path fails open on, not a mistake in the URL.
    client = client_from_url(f"redis+cluster://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    assert isinstance(client, ClusterClient) and not client.connected
    with pytest.raises(RedisClusterException) as caught:
        client.ping()
    assert isinstance(caught.value, redis.ConnectionError)
    assert not isinstance(caught.value, MollifierConfigurationError)
    client.close()  # nothing was opened: nothing to connect for
    assert not client.connected
