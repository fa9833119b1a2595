"""The harness itself: the servers it hands out are real and isolated."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pika
import pytest
import redis

from dramatiq_mollifier import embedded
from dramatiq_mollifier.embedded import EmbeddedCluster, EmbeddedRedis, PortInUseError

from .servers import RabbitmqServer, refuse_occupied_databases


def test_redis_client_talks_to_a_real_server(redis_client: redis.Redis) -> None:
    # A Lua script runs: fakeredis-style stand-ins without EVAL would fail here.
    assert redis_client.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "k", 41) == 41
    info = redis_client.info("server")
    assert info.get("redis_version")


def test_each_test_starts_with_an_empty_database(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("left-behind", b"1")


def test_disposable_server_stops_and_restarts_on_its_port(disposable_redis: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(disposable_redis.url, socket_timeout=1, socket_connect_timeout=1)
    assert client.ping()
    port = disposable_redis.port
    disposable_redis.stop()
    try:
        client.ping()
        raise AssertionError("the stopped server still answered")
    except redis.ConnectionError:
        pass
    disposable_redis.start()
    assert disposable_redis.port == port
    assert client.ping()
    client.close()


def test_rabbitmq_server_accepts_a_publish(rabbitmq_url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    channel.queue_declare("harness", auto_delete=True)
    channel.basic_publish("", "harness", b"hello")
    _method, _properties, body = channel.basic_get("harness", auto_ack=True)
    connection.close()
    assert body == b"hello"


def test_a_server_given_by_url_with_data_in_the_test_databases_is_refused(
    disposable_redis: EmbeddedRedis,
) -> None:
    url = disposable_redis.url
    assert refuse_occupied_databases(url, flush_allowed=False) is None

    # Given someone's data in database 4 and in database 0 (which the tests never touch)
    for db in (0, 4):
        client = redis.Redis.from_url(f"{url.rsplit('/', 1)[0]}/{db}")
        client.set("theirs", b"1")
        client.close()

    refusal = refuse_occupied_databases(url, flush_allowed=False)
    assert refusal is not None
    assert "db 4: 1 keys" in refusal and "db 0" not in refusal
    assert "MOLLIFIER_TEST_REDIS_FLUSH=1" in refusal
    assert refuse_occupied_databases(url, flush_allowed=True) is None


def test_a_rabbitmq_node_that_will_not_start_is_tried_twice_and_reported_with_its_output(
    tmp_path: Path,
) -> None:
    # Given a "server" that prints a line and exits at once
    binary = tmp_path / "rabbitmq-server"
    binary.write_text("#!/bin/sh\necho 'node failed: eaddrinuse'\nexit 3\n")
    binary.chmod(0o755)
    server = RabbitmqServer(str(binary))
    first_dir = server._dir.name

    # Then starting it fails after a second attempt on fresh ports, naming both attempts' output
    with pytest.raises(RuntimeError, match="did not start, twice") as failure:
        server.start()
    assert str(failure.value).count("exit code 3") == 2
    assert str(failure.value).count("node failed: eaddrinuse") == 2
    # And neither attempt leaves its directory behind
    assert not Path(first_dir).exists()
    assert not Path(server._dir.name).exists()


@pytest.mark.redis
def test_an_embedded_server_on_a_taken_port_fails_with_its_own_error(disposable_redis: EmbeddedRedis) -> None:
    # start() took the other server's PING for its own and returned, with a dead process.
    second = EmbeddedRedis(disposable_redis.binary, port=disposable_redis.port)
    with pytest.raises(PortInUseError, match=f"did not start on port {disposable_redis.port}:\n.+"):
        second.start()
    assert second.pid is None
    second.close()


@contextmanager
def listening_on(port: int) -> Iterator[None]:
    """Someone else's socket on ``port``, as when a port found free is taken before the bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.redis
def test_an_embedded_server_whose_free_port_was_taken_starts_on_another(redis_binary: str) -> None:
    server = EmbeddedRedis(redis_binary)
    taken = server.port
    with listening_on(taken):
        server.start()
    try:
        assert server.port != taken
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        server.close()


@pytest.mark.redis
@pytest.mark.parametrize("port_kind", ["client", "bus"])
def test_a_cluster_whose_node_port_was_taken_starts_on_other_ports(redis_binary: str, port_kind: str) -> None:
    # A CI run failed here: a node's free port was taken before it bound, and the nodes already
    # started were left running
    cluster = EmbeddedCluster(redis_binary, primaries=3)
    taken = cluster.nodes[2].port if port_kind == "client" else cluster.bus_ports[2]
    with listening_on(taken):
        cluster.start()
    try:
        assert taken not in [node.port for node in cluster.nodes] + cluster.bus_ports
        with redis.RedisCluster.from_url(cluster.url.replace("redis+cluster", "redis")) as client:
            assert client.set("k", b"v") and client.get("k") == b"v"
    finally:
        cluster.close()


@pytest.mark.redis
def test_a_cluster_that_cannot_start_stops_the_nodes_it_started(
    redis_binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "PORT_ATTEMPTS", 1)
    cluster = EmbeddedCluster(redis_binary, primaries=3)
    started = [node.port for node in cluster.nodes[:2]]
    with listening_on(cluster.nodes[2].port), pytest.raises(PortInUseError):
        cluster.start()
    assert all(refuses(port) for port in started)
