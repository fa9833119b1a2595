"""An app or a worker started while every seed of its Redis Cluster is down.

redis-py's cluster client connects in its constructor, so ``Mollifier()`` raised at the app's
import: a web server could not start during a cluster outage, though its sends would only have
failed open. Each test starts a cluster of its own, after the process under test has started.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from redis.exceptions import RedisClusterException

from dramatiq_mollifier import CrashRetries, Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.buffer.cluster_client import RECONNECT_INTERVAL_MS, ClusterClient, ClusterUnreachable
from dramatiq_mollifier.drain.connections import drain_client
from dramatiq_mollifier.embedded import EmbeddedCluster, EmbeddedRedis, free_port

from .mollifier_helpers import eventually
from .test_e2e_worker import PROCESSED_KEY, QUEUE_NAME, Worker, processed, workers  # noqa: F401

pytestmark = pytest.mark.redis


@pytest.fixture
def cluster_not_started(redis_binary: str) -> Iterator[EmbeddedCluster]:
    """A cluster whose ports are chosen and whose nodes are not running yet."""
    cluster = EmbeddedCluster(redis_binary, primaries=3)
    yield cluster
    cluster.close()


def start_on_its_ports(cluster: EmbeddedCluster) -> None:
    # Not start(): on a port taken meanwhile it moves to others, away from the URL under test.
    cluster._start_on_ports()


def stop_background_reads(mollifier: Mollifier) -> None:
    """End what would go on reading the test's cluster after the test: its ports may be the next
    cluster's."""
    mollifier.rules.close()
    mollifier.buffer.client.close()


def seeds_url(cluster: EmbeddedCluster) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in cluster.primaries)


def test_an_app_starts_during_the_outage_sends_fail_open_and_divert_once_a_seed_answers(
    cluster_not_started: EmbeddedCluster,
) -> None:
    settings = MollifierSettings(
        enabled=True,
        enabled_orgs={"acme"},
        redis_url=seeds_url(cluster_not_started) + "?socket_timeout=0.4",
        trip_threshold=5,
    )
    broker = StubBroker()
    started = time.monotonic()
    mollifier = Mollifier(settings)  # raised RedisClusterException here before
    try:
        diverts_once_a_seed_answers(mollifier, broker, cluster_not_started, started)
    finally:
        stop_background_reads(mollifier)
        broker.close()


def diverts_once_a_seed_answers(
    mollifier: Mollifier, broker: StubBroker, cluster: EmbeddedCluster, started: float
) -> None:
    settings = mollifier.settings
    broker.add_middleware(mollifier)
    ping = dramatiq.actor(lambda n: None, actor_name="ping", broker=broker)
    sent = [ping.send_with_options(args=(n,), org_id="acme") for n in range(50)]
    took_s = time.monotonic() - started
    client = mollifier.buffer.client
    assert isinstance(client, ClusterClient) and not client.connected
    assert [m for m in sent if m.options.get("mollified")] == []
    assert broker.queues["default"].qsize() == 50  # every send failed open, onto the broker
    assert took_s < 2, took_s
    with pytest.raises(ClusterUnreachable):
        client.ping()

    drain = drain_client(client, socket_timeout_ms=5_000)  # as a worker booted now builds it
    start_on_its_ports(cluster)
    diverted: list[str] = []

    def a_send_diverts() -> bool:
        message = ping.send_with_options(args=(0,), org_id="acme")
        if message.options.get("mollified"):
            diverted.append(message.message_id)
        return len(diverted) >= 10

    eventually(a_send_diverts, 20, "sends to be diverted once the cluster answers")
    assert client.connected
    drain.ping()  # its first use connects it, with its own timeout over the URL's
    assert drain.connected and drain.get_connection_kwargs()["socket_timeout"] == 5
    drain.close()
    reader = MollifierBuffer.from_url(settings.redis_url, key_prefix=settings.key_prefix)
    try:
        assert reader.depth() == len(diverted)
        assert {reader.get(message_id) is not None for message_id in diverted} == {True}
    finally:
        reader.client.close()


def test_a_worker_booted_during_the_outage_drains_once_a_seed_answers(
    cluster_not_started: EmbeddedCluster,
    workers: Callable[..., Worker],  # noqa: F811
    broker_url: str,
    broker_client: redis.Redis,
) -> None:
    url = seeds_url(cluster_not_started)
    env = {
        **os.environ,
        "E2E_REDIS_URL": broker_url,
        "MOLLIFIER_ENABLED": "true",
        "MOLLIFIER_ENABLED_ORGS": "*",
        "MOLLIFIER_REDIS_URL": url,
        "MOLLIFIER_DRAIN_POLL_INTERVAL_MS": "50",
        "MOLLIFIER_DRAIN_SHUTDOWN_TIMEOUT_MS": "3000",
    }
    worker = workers(env)
    eventually(lambda: "ready for action" in worker.output(), 30, "the worker to boot")
    assert "mollifier.cluster_unreachable" in worker.output()

    start_on_its_ports(cluster_not_started)
    settings = MollifierSettings(enabled=True, enabled_orgs={"*"}, redis_url=url, trip_threshold=20)
    producer = RedisBroker(url=broker_url)
    mollifier = Mollifier(settings)
    try:
        sends_are_drained_by(worker, mollifier, producer, broker_client)
    finally:
        stop_background_reads(mollifier)
        producer.close()


def sends_are_drained_by(
    worker: Worker, mollifier: Mollifier, producer: RedisBroker, broker_client: redis.Redis
) -> None:
    producer.add_middleware(mollifier)
    record = dramatiq.actor(lambda n: None, actor_name="record", queue_name=QUEUE_NAME, broker=producer)
    sent = [record.send_with_options(args=(n,), org_id="acme", env_id="prod") for n in range(300)]
    diverted = [m.message_id for m in sent if m.options.get("mollified")]
    print(f"diverted {len(diverted)} of {len(sent)}")
    assert len(diverted) >= 200

    eventually(lambda: broker_client.llen(PROCESSED_KEY) >= len(sent), 30, "every message to be processed")
    counts = Counter(processed(broker_client))
    assert sorted(counts) == sorted(m.message_id for m in sent)
    assert mollifier.buffer.depth() == 0
    worker.terminate()
    assert worker.wait(15) == 0


def test_an_app_starts_while_its_cluster_is_being_formed(cluster_not_started: EmbeddedCluster) -> None:
    # Nodes up with no slots yet (a cluster being created): redis-py raised "All slots are not
    # covered" (redis-py 5.0: an IndexError) from Mollifier() and from CrashRetries.from_url.
    for node in cluster_not_started.nodes:
        node.start()
    url = seeds_url(cluster_not_started)
    Mollifier(MollifierSettings(redis_url=url))  # (disabled: no background reads to stop)
    assert not CrashRetries.from_url(url).store.client.connected
    client = client_from_url(url)
    assert isinstance(client, ClusterClient) and not client.connected
    with pytest.raises(ClusterUnreachable) as refused:
        client.ping()
    assert refused.value.__cause__ is None  # within the interval: refused without a try
    time.sleep(RECONNECT_INTERVAL_MS / 1000)  # (the interval is the client's own, not a wait)
    with pytest.raises(ClusterUnreachable) as tried:
        client.ping()
    assert tried.value.__cause__ is not None  # a connect was tried, and failed as an outage
    assert len(client.get_connection_kwargs()["startup_nodes"]) == 3  # each try builds its own


def test_a_drain_client_built_before_a_seed_answered_does_not_wait_for_one_at_boot() -> None:
    # A seed that accepts connections and never answers (a hung node): the drain client tried
    # at once, holding the worker's boot for its 5 s reply timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        buffer = MollifierBuffer.from_url(f"redis+cluster://127.0.0.1:{silent.getsockname()[1]}")
        assert not buffer.client.connected
        started = time.monotonic()
        client = drain_client(buffer.client, socket_timeout_ms=5_000)
        took_s = time.monotonic() - started
        assert isinstance(client, ClusterClient) and not client.connected
        assert client.get_connection_kwargs()["socket_timeout"] == 5
        assert took_s < 1, took_s


def test_a_seed_outside_cluster_mode_found_on_a_later_connect_is_logged_as_a_mistake(
    redis_binary: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    buffer = MollifierBuffer.from_url(f"redis+cluster://127.0.0.1:{port}")
    assert not buffer.client.connected
    with EmbeddedRedis(redis_binary, port=port), caplog.at_level(logging.ERROR):
        time.sleep(RECONNECT_INTERVAL_MS / 1000)
        with pytest.raises(ClusterUnreachable):  # fails open, and says why
            buffer.client.ping()
    assert "mollifier.cluster_misconfigured a seed in MOLLIFIER_REDIS_URL" in caplog.text


def test_the_crash_store_raises_a_lost_cluster_as_a_connection_error(
    redis_binary: str,
) -> None:
    # redis-py then raises RedisClusterException, no RedisError, which CrashRetries' hooks (they
    # catch redis.RedisError) let out: Dramatiq logged them CRITICAL, the delivery untracked.
    cluster = EmbeddedCluster(redis_binary, primaries=1).start()
    try:
        store = CrashRetries.from_url(seeds_url(cluster)).store
        assert store.get_record("m1") is None
    finally:
        cluster.close()
    try:
        for _ in range(3):
            with pytest.raises(redis.ConnectionError):
                store.get_record("m1")
    finally:
        store.client.close()


def test_a_wrong_password_still_raises_at_construction(redis_binary: str) -> None:
    # A mistake, not an outage: as loud as before clients started unconnected.
    # (The bus port defaults to the port + 10000, out of range for high free ports.)
    options = (
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        str(free_port()),
    )
    with EmbeddedRedis(redis_binary, extra_args=options) as node:
        admin = redis.Redis(host="127.0.0.1", port=node.port)
        admin.config_set("requirepass", "s3cret")
        admin.close()
        with pytest.raises(RedisClusterException, match=r"(?i)password|auth"):
            client_from_url(f"redis+cluster://:wrong@127.0.0.1:{node.port}")
