"""The direct hot path (scripts written straight to a pooled connection) only where it is safe:
plain redis-py clients without client-side caching or instrumentation, and never when forced off."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.cluster

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.scripts import direct_path_allowed

ONE_SERVER = pytest.mark.single_server(
    reason="the direct path and its opt-outs are a plain redis.Redis client's own path"
)


def trip(buffer: MollifierBuffer) -> bool:
    return buffer.evaluate_trip("o", "e", window_ms=10_000, threshold=0, hold_ms=1_000).tripped


@ONE_SERVER
def test_a_plain_client_takes_the_direct_path(make_redis_client: Callable[..., redis.Redis]) -> None:
    assert direct_path_allowed(make_redis_client())
    assert direct_path_allowed(make_redis_client(protocol=3))


@ONE_SERVER
def test_anything_but_an_exact_redis_client_over_a_plain_pool_takes_the_command_path(
    make_redis_client: Callable[..., redis.Redis], redis_url: str
) -> None:
    class Subclass(redis.Redis):
        pass

    class Pool(redis.ConnectionPool):
        pass

    assert not direct_path_allowed(Subclass.from_url(redis_url))
    assert not direct_path_allowed(redis.Redis(connection_pool=Pool.from_url(redis_url)))
    assert not direct_path_allowed(make_redis_client(single_connection_client=True))
    assert not direct_path_allowed(object())  # other clients: no pool at all
    # A RedisCluster (built without connecting: its constructor would look for a cluster)
    assert not direct_path_allowed(object.__new__(redis.cluster.RedisCluster))


@ONE_SERVER
def test_a_client_side_caching_client_takes_the_command_path(redis_url: str) -> None:
    # redis-py 5.1+ only (this project supports 5.0, which has no client-side caching); the
    # server needs 7.4+ to accept it, so nothing is sent here: the choice is made without I/O.
    cache_config = pytest.importorskip("redis.cache").CacheConfig
    client = redis.Redis.from_url(redis_url, protocol=3, cache_config=cache_config())

    assert not direct_path_allowed(client)


def counting_execute_command(calls: list[Any]) -> Callable[..., Any]:
    original = redis.Redis.execute_command

    @functools.wraps(original)
    def traced(self: redis.Redis, *args: Any, **options: Any) -> Any:
        calls.append(args[0])
        return original(self, *args, **options)

    return traced


@ONE_SERVER
def test_an_instrumented_client_class_sees_every_hot_path_call(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str
) -> None:
    # Given redis-py instrumented the way OpenTelemetry's instrumentor does it (a wrapper on the class)
    calls: list[Any] = []
    monkeypatch.setattr(redis.Redis, "execute_command", counting_execute_command(calls))
    client = redis.Redis.from_url(redis_url)

    # When the send side runs its scripts
    buffer = MollifierBuffer(client, key_prefix=key_prefix)
    assert trip(buffer)
    assert buffer.accept("m1", org_id="o", env_id="e", payload=b"x")

    # Then the instrumentation saw them (and the script loads after NOSCRIPT on a fresh server)
    assert calls.count(b"EVALSHA") >= 2
    client.close()


@ONE_SERVER
def test_the_direct_path_can_be_forced_off(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    calls: list[Any] = []
    original = client.execute_command
    client.execute_command = lambda *args, **options: calls.append(args[0]) or original(*args, **options)  # type: ignore[method-assign]

    buffer = MollifierBuffer(client, key_prefix=key_prefix, direct_hot_path=False)
    assert trip(buffer)

    assert b"EVALSHA" in calls
    client.close()
