"""Caps on buffered messages per env and per org, with each overflow policy, in one process and
across two (the cap is checked atomically against the shared depth counters)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier import BufferCapExceededError, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.health import eviction_problem
from dramatiq_mollifier.embedded import EmbeddedRedis

from .mollifier_helpers import THRESHOLD, add_mollifier, decisions, eventually, stop_process

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(broker_url: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=broker_url)
    yield broker
    broker.close()


def on_broker(client: redis.Redis) -> int:
    return int(client.hlen("dramatiq:default.msgs"))


def ingest(broker: dramatiq.Broker) -> dramatiq.Actor[Any, Any]:
    return dramatiq.actor(lambda n: None, actor_name="ingest", broker=broker)


def send(actor: dramatiq.Actor[Any, Any], count: int, env: str = "prod") -> int:
    """Send ``count`` for acme/env; how many raised BufferCapExceededError."""
    rejected = 0
    for n in range(count):
        try:
            actor.send_with_options(args=(n,), org_id="acme", env_id=env)
        except BufferCapExceededError as exc:
            assert (exc.org_id, exc.env_id, exc.scope, exc.limit) == ("acme", env, "env", 5)
            rejected += 1
    return rejected


def test_pass_through_sends_what_is_over_the_cap_to_the_broker(
    broker: RedisBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, cap_per_env=5)
    assert send(ingest(broker), THRESHOLD + 20) == 0
    assert mollifier.buffer.depth("acme", "prod") == 5
    assert on_broker(broker.client) == THRESHOLD + 15
    assert decisions(reader)[("pass_through", "cap_pass_through", True)] == 15


def test_reject_raises_a_clear_error_from_send(
    broker: RedisBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, cap_per_env=5, cap_overflow="reject")
    assert send(ingest(broker), THRESHOLD + 20) == 15
    assert mollifier.buffer.depth("acme", "prod") == 5
    assert on_broker(broker.client) == THRESHOLD
    assert decisions(reader)[("rejected", "cap_rejected", True)] == 15


def test_dead_letter_keeps_what_is_over_the_cap_as_dead_letters(
    broker: RedisBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(
        broker, redis_client, key_prefix, cap_per_env=5, cap_overflow="dead_letter"
    )
    assert send(ingest(broker), THRESHOLD + 20) == 0
    assert mollifier.buffer.depth("acme", "prod") == 5
    assert on_broker(broker.client) == THRESHOLD
    failed = mollifier.buffer.failed("acme", "prod")
    assert len(failed) == 15
    assert {e.last_error for e in failed} == {
        ("cap_exceeded", "the env's cap of 5 buffered messages was reached")
    }
    assert decisions(reader)[("mollify", "cap_dead_letter", True)] == 15
    # An operator can retry them once there is room
    assert mollifier.buffer.controls.lookup(failed[0].message_id).state == "dead_lettered"


def test_an_org_cap_counts_every_env_and_a_runtime_override_wins(
    broker: RedisBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, _ = add_mollifier(broker, redis_client, key_prefix, cap_per_org=8, trip_threshold=0)
    actor = ingest(broker)
    send(actor, 6, env="prod")
    send(actor, 6, env="dev")
    assert mollifier.buffer.depth("acme") == 8

    # A runtime override: acme/stage may hold 2, whatever the settings say
    controls = mollifier.buffer.controls
    controls.set_cap("acme", limit=100)
    controls.set_cap("acme", "stage", limit=2)
    eventually(lambda: mollifier.rules.current().caps != {}, 3, "the override to reach the gate")
    send(actor, 5, env="stage")
    assert mollifier.buffer.depth("acme", "stage") == 2
    assert mollifier.buffer.depth("acme") == 10


def test_a_cap_never_slows_a_tenant_without_one(
    broker: RedisBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, _ = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0)
    mollifier.buffer.controls.set_cap("globex", limit=1)
    mollifier.rules.refresh()
    send(ingest(broker), 30)
    assert mollifier.buffer.depth("acme", "prod") == 30


@pytest.mark.parametrize(("policy", "outcome"), [
    ("pass_through", (25, 375, 0, 0)),
    ("reject", (25, 0, 0, 375)),
    ("dead_letter", (25, 0, 375, 0)),
])  # fmt: skip
def test_two_processes_sending_at_once_never_exceed_the_cap_together(
    *,  # fixtures by name
    redis_url: str,
    broker_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    policy: str,
    outcome: tuple[int, ...],
) -> None:
    # (buffered, sent to the broker, dead-lettered, rejected) of 400 sends, all over the threshold
    env = {
        **os.environ,
        "CAP_BROKER_URL": broker_url,
        "CAP_COUNT": "200",
        "CAP_START_KEY": f"{key_prefix}:go",
        "MOLLIFIER_ENABLED": "true",
        "MOLLIFIER_ENABLED_ORGS": "*",
        "MOLLIFIER_REDIS_URL": redis_url,
        "MOLLIFIER_KEY_PREFIX": key_prefix,
        "MOLLIFIER_TRIP_THRESHOLD": "0",
        "MOLLIFIER_DRAINER_ENABLED": "false",
        "MOLLIFIER_CAP_PER_ENV": "25",
        "MOLLIFIER_CAP_OVERFLOW": policy,
    }
    producers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.apps.cap_producer"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        redis_client.set(f"{key_prefix}:go", 1)
        outputs = [p.communicate(timeout=60) for p in producers]
    finally:
        for producer in producers:
            stop_process(producer, 5)
    assert [p.returncode for p in producers] == [0, 0], outputs
    rejected = sum(int(out.strip().rsplit("=", 1)[1]) for out, _ in outputs)
    buffer = MollifierBuffer(redis_client, **MollifierSettings(key_prefix=key_prefix).buffer_options)
    with redis.Redis.from_url(broker_url) as broker_client:
        on_the_broker = on_broker(broker_client)
    assert (buffer.depth("acme", "prod"), on_the_broker, len(buffer.failed()), rejected) == outcome


def test_an_evicting_maxmemory_policy_is_warned_about_at_startup(
    disposable_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(disposable_redis.url)
    try:
        assert eviction_problem(client) is None  # noeviction, the default
        client.config_set("maxmemory-policy", "allkeys-lru")
        broker = RedisBroker(url=disposable_redis.url)
        with caplog.at_level("WARNING", logger="dramatiq_mollifier.buffer.health"):
            add_mollifier(broker, None, "mtest", redis_url=disposable_redis.url)
            eventually(lambda: any("allkeys-lru" in r.getMessage() for r in caplog.records), 5, "the warning")
        (record,) = [r for r in caplog.records if "allkeys-lru" in r.getMessage()]
        assert "noeviction" in record.getMessage() and "mollifier.eviction_policy" in record.getMessage()
        broker.close()
    finally:
        client.close()
