"""The Redis URLs the settings, the middleware and the CLI take: one server, cluster, Sentinel."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from redis.sentinel import SentinelConnectionPool

from dramatiq_mollifier import MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.clients import client_from_url, slot_groups_for
from dramatiq_mollifier.buffer.keys import KeySpace
from dramatiq_mollifier.embedded import EmbeddedRedis, free_port
from dramatiq_mollifier.errors import BufferUnavailableError, MollifierConfigurationError
from dramatiq_mollifier.redis_urls import redis_url_problem

from .mollifier_helpers import stop_process
from .servers import unavailable


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://h:6380",
        "unix:///tmp/redis.sock",
        "redis+cluster://10.0.0.1:7000",
        "redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0",
        "rediss+cluster://user:pw@node:7000/0",
        "redis+sentinel://s1:26379,s2:26380/mymaster",
        "redis+sentinel://:secret@s1:26379/mymaster/3",
        "redis+sentinel://app:pw@s1/mymaster?sentinel_password=s&socket_timeout=2",
    ],
)
def test_accepted_urls(url: str) -> None:
    assert redis_url_problem(url) is None
    assert MollifierSettings(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:1", "expected a redis://"),
        ("redis+cluster://h:7000/3", "database 0 only"),
        ("redis+sentinel://s1:26379", "no service name"),
        ("redis+sentinel://s1:99999/svc", "bad Sentinel port"),
        ("redis+sentinel://s1:26379/svc/x", "not a number"),
        ("redis+cluster://:7000", "no host"),
        # redis-py refuses these only when the client is built, without naming the setting
        ("redis://h:6379/0?socket_timeout=abc", "bad query option"),
        ("redis+cluster://h:7000?socket_connect_timeout=x", "bad query option"),
        # Each was accepted, then ignored or refused only when the client was built
        ("unix:///tmp/redis.sock?socket_timeout=abc", "bad query option"),
        ("redis+cluster://h:7000?db=3", "database 0 only"),
        ("redis+cluster://h1:7000,h2:abc", "bad seed port"),
        ("redis+cluster://h1:7000,,h2:7001", "no host"),
        ("redis+sentinel://s1:26379/svc?socket_timeout=abc", "bad query option"),
        ("redis+sentinel://s1:26379/svc?db=2", "query option 'db'"),
        ("redis+sentinel://s1:26379/svc?password=x", "query option 'password'"),
    ],
)
def test_refused_urls_say_why(url: str, problem: str) -> None:
    assert problem in (redis_url_problem(url) or "")
    with pytest.raises(MollifierConfigurationError, match="redis_url"):
        MollifierSettings(redis_url=url)


def test_slot_groups_default_to_the_url_kind_and_are_bounded() -> None:
    assert MollifierSettings().effective_slot_groups == 0
    assert MollifierSettings(redis_url="redis+cluster://h:7000").effective_slot_groups == 16
    assert MollifierSettings(redis_url="redis+cluster://h:7000", slot_groups=4).effective_slot_groups == 4
    assert MollifierSettings(slot_groups=8).effective_slot_groups == 8
    for bad in (-1, 1025):
        with pytest.raises(MollifierConfigurationError, match="slot_groups"):
            MollifierSettings(slot_groups=bad)
    with pytest.raises(MollifierConfigurationError, match="slot_groups"):
        MollifierSettings(redis_url="redis+cluster://h:7000", slot_groups=0)
    with pytest.raises(MollifierConfigurationError, match="trip_global_threshold"):
        MollifierSettings(redis_url="redis+cluster://h:7000", trip_global_threshold=10)
    # A brace in the prefix took over the groups' hash tags: CROSSSLOT, or every group on one slot
    for prefix in ("app{}", "{mollifier}"):
        with pytest.raises(MollifierConfigurationError, match="key_prefix"):
            MollifierSettings(redis_url="redis+cluster://h:7000", key_prefix=prefix)
        with pytest.raises(MollifierConfigurationError, match="braces"):
            KeySpace(prefix, groups=4)
    assert MollifierSettings(key_prefix="{mollifier}").key_prefix == "{mollifier}"  # no groups: no tags


def test_the_clients_built_for_each_kind_of_url() -> None:
    sentinel = client_from_url("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/svc/2", socket_timeout=0.5)
    assert isinstance(sentinel, redis.Redis)
    pool = sentinel.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "svc"
    assert [(s.connection_pool.connection_kwargs["port"]) for s in pool.sentinel_manager.sentinels] == [1, 2]
    assert pool.connection_kwargs["db"] == 2
    # A Sentinel host without a port takes Sentinel's (a ValueError from int() before)
    default_port = client_from_url("redis+sentinel://127.0.0.1,127.0.0.1:2/svc").connection_pool
    assert [s.connection_pool.connection_kwargs["port"] for s in default_port.sentinel_manager.sentinels] == [
        26379,
        2,
    ]
    plain = client_from_url("redis://127.0.0.1:1/4")
    assert type(plain) is redis.Redis and slot_groups_for(None, plain) == 0
    assert slot_groups_for(3, plain) == 3
    assert slot_groups_for(None, RedisCluster.__new__(RedisCluster)) == 16


@pytest.mark.redis
def test_a_sentinel_url_reaches_the_primary_sentinel_names(
    disposable_redis: EmbeddedRedis, redis_binary: str, tmp_path: Path
) -> None:
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {disposable_redis.port} 1\n"
    )
    process = subprocess.Popen(
        [redis_binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"redis+sentinel://127.0.0.1:{port}/mymaster/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                buffer = MollifierBuffer.from_url(url)
                assert buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
                break
            except BufferUnavailableError:
                if time.monotonic() > deadline or process.poll() is not None:
                    unavailable(f"{redis_binary} did not run as a Sentinel on port {port}")
                time.sleep(0.1)
        assert buffer.slot_groups == 0
        plain = redis.Redis(host="127.0.0.1", port=disposable_redis.port)
        assert plain.hget("mollifier:entry:m1", "org") == b"acme"  # today's key names
        plain.close()
        assert MollifierSettings(redis_url=url).effective_slot_groups == 0
    finally:
        stop_process(process, 10)
