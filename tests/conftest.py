"""Fixtures that give every test real servers. See ``tests/servers.py`` for how they are found."""

from __future__ import annotations

import gc
import itertools
import os
import subprocess
import uuid
import warnings
from collections.abc import Callable, Iterator

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.embedded import EmbeddedCluster, EmbeddedRedis, find_server_binary

from .fake_redis import refused_url, silent_server  # noqa: F401 (fixtures for every test module)
from .report_fallback import pytest_runtest_makereport  # noqa: F401 (a hook, registered by its name)
from .servers import (
    TEST_DATABASES,
    RabbitmqServer,
    RedisProvider,
    RedisTarget,
    find_rabbitmq_server,
    unavailable,
)


@pytest.fixture(autouse=True)
def no_mollifier_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own ``MOLLIFIER_*`` settings must not change what a test (or a process it
    starts) sees; the harness's ``MOLLIFIER_TEST_*`` variables stay."""
    for name in list(os.environ):
        if name.startswith("MOLLIFIER_") and not name.startswith("MOLLIFIER_TEST_"):
            monkeypatch.delenv(name)


# Database 0 is left alone; each test takes the next of 1..15 and flushes it first (on a server
# given by URL, only once the provider saw them empty or was told it may flush them).
_databases = itertools.cycle(TEST_DATABASES)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish() -> None:
    """Collect, once the session's fixtures are torn down, what is left of the run's clients.

    A redis-py connection caught in a reference cycle keeps its socket until a collection; a
    socket finalized that way warns (ResourceWarning), which ``filterwarnings = error`` makes an
    error. pytest collects once more at exit and fails the whole run over such a warning, after
    every test passed (seen once, on the oldest redis-py). During the tests the filter still
    applies: a socket a test leaks and drops while it runs fails that test.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def pytest_report_header() -> list[str]:
    url = os.environ.get("MOLLIFIER_TEST_REDIS_URL")
    if url:
        return [f"mollifier redis: {url} (MOLLIFIER_TEST_REDIS_URL)"]
    binary = find_server_binary(os.environ.get("MOLLIFIER_TEST_REDIS_SERVER"))
    if binary is None:
        return ["mollifier redis: no server binary found"]
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return [f"mollifier redis: {binary}", f"mollifier redis version: {version.stdout.strip()}"]


@pytest.fixture(scope="session")
def redis_target() -> Iterator[RedisTarget]:
    """The session's Redis-compatible server (started here unless given by URL)."""
    provider = RedisProvider()
    target = provider.start()
    if isinstance(target, str):
        unavailable(target)
        return
    print(f"\nredis target: {target.kind} {target.version} at {target.url}")
    try:
        yield target
    finally:
        provider.stop()


#: ``MOLLIFIER_TEST_CLUSTER=1``: the ``redis_*`` fixtures give the session's 3-primary cluster
#: (``redis+cluster://`` URL, ``RedisCluster`` clients), so every Redis-touching test runs on
#: it, with the slot-group layout a cluster client implies.
CLUSTER_MODE = os.environ.get("MOLLIFIER_TEST_CLUSTER") == "1"


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedCluster]:
    """A 3-primary Redis-compatible cluster on loopback for the session, stopped by its PIDs."""
    binary = find_server_binary(os.environ.get("MOLLIFIER_TEST_REDIS_SERVER"))
    if binary is None:
        unavailable("no redis-server or valkey-server binary to start a cluster")
        return
    cluster = EmbeddedCluster(binary, primaries=3).start()
    try:
        yield cluster
    finally:
        cluster.close()


def flush_cluster(cluster: EmbeddedCluster) -> None:
    """Empty every node (replicas follow their primary)."""
    for node in cluster.primaries:
        client = cluster.client(node)
        try:
            client.flushall()
        finally:
            client.close()


def _fresh_database(target: RedisTarget) -> str:
    """The URL of the next test database of the session's one server, flushed."""
    base = target.url.rsplit("/", 1)[0]
    url = f"{base}/{next(_databases)}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_target: RedisTarget) -> str:
    """A URL to a database of its own for this test, empty at the start."""
    if CLUSTER_MODE:
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
        flush_cluster(cluster)
        return cluster.url
    return _fresh_database(redis_target)


@pytest.fixture
def broker_url(redis_url: str, redis_target: RedisTarget) -> str:
    """Where a test's Dramatiq ``RedisBroker`` lives: ``redis_url`` itself on one server; in
    cluster mode a database of the session's single server, since Dramatiq's RedisBroker cannot
    run on a cluster (the deployment this mirrors: broker on its own Redis, buffer on the cluster).
    """
    return _fresh_database(redis_target) if CLUSTER_MODE else redis_url


@pytest.fixture
def broker_client(broker_url: str) -> Iterator[redis.Redis]:
    """A plain client on ``broker_url`` (what the broker wrote, and the apps' own records)."""
    client = redis.Redis.from_url(broker_url, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A RESP3 client (redis-py's default protocol, pinned) on this test's database."""
    client: redis.Redis = client_from_url(redis_url, protocol=3, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of its own for this test."""
    return f"mtest-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_binary() -> str:
    """A server binary the test may start and stop itself (outage tests)."""
    binary = find_server_binary(os.environ.get("MOLLIFIER_TEST_REDIS_SERVER"))
    if binary is None:
        unavailable("no redis-server or valkey-server binary to start a disposable server")
        raise AssertionError("unreachable")
    return binary


@pytest.fixture
def disposable_redis(redis_binary: str) -> Iterator[EmbeddedRedis]:
    """A server of this test's own, which it may stop and start again on the same port."""
    server = EmbeddedRedis(redis_binary).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """AMQP URL of a RabbitMQ node started for this session on loopback."""
    url = os.environ.get("MOLLIFIER_TEST_RABBITMQ_URL")
    if url:
        yield url
        return
    binary = find_rabbitmq_server()
    if binary is None:
        unavailable("no rabbitmq-server: install Debian's rabbitmq-server or set MOLLIFIER_TEST_RABBITMQ_URL")
        return
    server = RabbitmqServer(binary).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def make_redis_client(redis_url: str) -> Iterator[Callable[..., redis.Redis]]:
    """Build extra clients on this test's database; all are closed at the end."""
    clients: list[redis.Redis] = []

    def make(**kwargs: object) -> redis.Redis:
        client: redis.Redis = client_from_url(redis_url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def buffer(redis_client: redis.Redis, key_prefix: str) -> MollifierBuffer:
    """A buffer over the test's own database and key prefix (default lease and TTL)."""
    return MollifierBuffer(redis_client, key_prefix=key_prefix)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that reaches a Redis server (the shared one, or one of its own) is marked, so CI
    # can rerun exactly those on Redis 7 and with the oldest redis-py.
    for item in items:
        single = item.get_closest_marker("single_server")
        if single is not None and not single.kwargs.get("reason"):
            raise pytest.UsageError(f"{item.nodeid}: single_server needs a reason= saying why")
        fixtures = getattr(item, "fixturenames", ())
        if "redis_target" in fixtures or "redis_binary" in fixtures or "redis_cluster" in fixtures:
            item.add_marker(pytest.mark.redis)
