"""The adaptive drain budget: the fleet's consumption rate times the target wait, on a real Redis."""

from __future__ import annotations

import math
import time

import pytest
import redis

from dramatiq_mollifier import MollifierConfigurationError, MollifierSettings
from dramatiq_mollifier.drain.pace import MIN_OUTSTANDING, RATE_WINDOW_MS, DrainPace, pace_for
from dramatiq_mollifier.telemetry import Telemetry

from .layout_helpers import key_space
from .mollifier_helpers import metrics

pytestmark = pytest.mark.redis


def started(pace: DrainPace, count: int, tag: str) -> None:
    """``count`` drained messages reach the broker and workers start them."""
    claim = pace.claim(count)
    ids = [f"{tag}-{i}" for i in range(claim.granted)]
    pace.bind(claim, ids)
    pace.release(ids)


def server_ms(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds * 1000 + micros / 1000


def test_the_budget_is_the_floor_until_the_consumption_rate_is_known(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=1_000, target_wait_ms=100)

    claim = pace.claim(1_000)

    assert claim.granted == claim.budget == MIN_OUTSTANDING


def test_started_messages_measure_the_consumption_rate(redis_client: redis.Redis, key_prefix: str) -> None:
    # Given 100 drained messages started, then one more after the rate window closed
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=1_000, target_wait_ms=100)
    pace.max_outstanding = 100  # the first claim may take all of them
    pace.min_outstanding = 100
    first_ms = server_ms(redis_client)
    started(pace, 100, "a")
    time.sleep(RATE_WINDOW_MS / 1000 * 1.5)
    started(pace, 1, "b")
    last_ms = server_ms(redis_client)

    # Then the rate is 101 starts over the time between the first and the last (or a little less)
    rate = float(redis_client.hget(key_space(redis_client, key_prefix).drain_consumed, "rate") or 0)
    assert 101_000 / (last_ms - first_ms) <= rate <= 101_000 / (RATE_WINDOW_MS * 1.5)

    # And the budget is the floor plus that rate times the target wait
    pace.min_outstanding = MIN_OUTSTANDING
    pace.max_outstanding = 1_000
    expected = MIN_OUTSTANDING + math.ceil(rate * 100 / 1000)
    assert pace.claim(0).budget == expected


def test_the_first_rate_is_known_a_quarter_window_after_the_first_starts(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a burst's first drained messages started: no rate yet, the budget is its floor
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=1_000, target_wait_ms=100)
    started(pace, MIN_OUTSTANDING, "a")

    # When more start a little over a quarter of the rate window later
    time.sleep(RATE_WINDOW_MS / 4 / 1000 * 1.2)
    started(pace, 10, "b")

    # Then the fleet's rate sizes the budget (it used to wait a whole window at the floor)
    assert pace.claim(0).budget > MIN_OUTSTANDING


def hold(redis_client: redis.Redis, key_prefix: str, count: int) -> tuple[DrainPace, list[str]]:
    """``count`` drained messages in the broker, held by a fixed budget on the same keys."""
    holder = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=count)
    claim = holder.claim(count)
    ids = [f"held-{i}" for i in range(claim.granted)]
    holder.bind(claim, ids)
    return holder, ids


def window_closed_by(
    redis_client: redis.Redis, key_prefix: str, rate: float, starts: int
) -> tuple[float, float, float]:
    """A window of ``RATE_WINDOW_MS`` open after a rate of ``rate``, closed by ``starts`` starts.

    Returns the new rate and the bounds of the window's own rate (the close's server time is
    known to within the release call)."""
    keys = key_space(redis_client, key_prefix)
    holder, ids = hold(redis_client, key_prefix, starts)
    opened = int(server_ms(redis_client)) - RATE_WINDOW_MS
    redis_client.hset(keys.drain_consumed, mapping={"n": 0, "at_ms": opened, "rate": rate})
    # free.lua's clock: whole milliseconds
    before = math.floor(server_ms(redis_client))
    holder.release(ids)
    after = math.floor(server_ms(redis_client))
    # (less a hair for the 14 digits Lua keeps of a float)
    fresh_low = starts * 1000 / (after - opened) * (1 - 1e-9)
    fresh_high = starts * 1000 / (before - opened) * (1 + 1e-9)
    return float(redis_client.hget(keys.drain_consumed, "rate") or 0), fresh_low, fresh_high


def test_a_faster_window_replaces_the_rate_at_once(redis_client: redis.Redis, key_prefix: str) -> None:
    # A window about three times faster than the rate (a burst's start: the budget let more through)
    rate, fresh_low, fresh_high = window_closed_by(redis_client, key_prefix, 1_000, 300)

    # Its own rate, not a blend with the old one (which trailed the fleet a window per step)
    assert fresh_low <= rate <= fresh_high


def test_a_slower_window_is_blended_with_the_rate(redis_client: redis.Redis, key_prefix: str) -> None:
    rate, fresh_low, fresh_high = window_closed_by(redis_client, key_prefix, 5_000, 100)

    assert (5_000 + fresh_low) / 2 <= rate <= (5_000 + fresh_high) / 2


def test_the_budget_never_passes_its_ceiling(redis_client: redis.Redis, key_prefix: str) -> None:
    keys = key_space(redis_client, key_prefix)
    now_ms = int(server_ms(redis_client))
    redis_client.hset(keys.drain_consumed, mapping={"n": 0, "at_ms": now_ms, "rate": 50_000})
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=300, target_wait_ms=100)

    assert pace.claim(10_000).granted == 300


def test_a_stalled_fleet_shrinks_the_budget_to_the_floor(redis_client: redis.Redis, key_prefix: str) -> None:
    # Given a fast rate measured, then no drained message started for ten windows
    keys = key_space(redis_client, key_prefix)
    stalled_since = int(server_ms(redis_client)) - 10 * RATE_WINDOW_MS
    redis_client.hset(keys.drain_consumed, mapping={"n": 0, "at_ms": stalled_since, "rate": 5_000})
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=1_000, target_wait_ms=100)

    # Then the budget is the floor: the old rate no longer holds
    assert pace.claim(1_000).budget == MIN_OUTSTANDING


def test_messages_that_never_reached_the_broker_are_not_counted_as_consumed(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=50, target_wait_ms=100)
    claim = pace.claim(10)
    ids = [f"m{i}" for i in range(claim.granted)]
    pace.bind(claim, ids)

    pace.give_back(ids)

    assert pace.in_use() == 0
    assert redis_client.exists(key_space(redis_client, key_prefix).drain_consumed) == 0


def test_a_fixed_budget_without_a_target_wait(redis_client: redis.Redis, key_prefix: str) -> None:
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=70)

    assert pace.claim(100).granted == 70


def test_the_settings_size_the_pace_and_the_gauge_shows_the_budget(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    settings = MollifierSettings(key_prefix=key_prefix, drain_target_wait_ms=250, drain_max_outstanding=400)
    pace = pace_for(settings, redis_client)
    assert pace is not None
    assert (pace.target_wait_ms, pace.max_outstanding) == (250, 400)
    with pytest.raises(MollifierConfigurationError, match="drain_target_wait_ms"):
        MollifierSettings(drain_target_wait_ms=-1)
    with pytest.raises(MollifierConfigurationError, match="drain_target_wait_ms"):
        MollifierSettings(drain_target_wait_ms=60_001)

    provider, reader = metrics()
    claim = pace.claim(5)
    Telemetry(provider).record_outstanding(claim.in_use, budget=claim.budget)
    gauges = {
        metric.name: [point.value for point in metric.data.data_points]
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert gauges["mollifier.drain.budget"] == [MIN_OUTSTANDING]
    assert gauges["mollifier.drain.outstanding"] == [0]
