"""The trip evaluator (SPEC section 4): a fixed window per (org, env), a strict threshold, a hold."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.models import Tenant, TripDecision


@pytest.fixture
def buffer(redis_client: redis.Redis, key_prefix: str) -> MollifierBuffer:
    return MollifierBuffer(redis_client, key_prefix=key_prefix)


def evaluate(
    buffer: MollifierBuffer,
    org: str = "o",
    env: str = "e",
    /,
    *,
    window_ms: int = 10_000,
    threshold: int = 3,
    hold_ms: int = 10_000,
) -> TripDecision:
    return buffer.evaluate_trip(org, env, window_ms=window_ms, threshold=threshold, hold_ms=hold_ms)


def test_counts_one_per_evaluation_and_trips_strictly_above_the_threshold(buffer: MollifierBuffer) -> None:
    decisions = [evaluate(buffer, threshold=3) for _ in range(5)]

    assert decisions == [
        TripDecision(False, 1),
        TripDecision(False, 2),
        TripDecision(False, 3),
        TripDecision(True, 4),
        TripDecision(True, 5),
    ]


def test_a_threshold_of_zero_trips_on_the_first_evaluation(buffer: MollifierBuffer) -> None:
    assert evaluate(buffer, threshold=0) == TripDecision(True, 1)


def test_one_hundred_concurrent_evaluations_get_counts_one_to_one_hundred(
    redis_url: str, key_prefix: str
) -> None:
    counts: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(100)

    def evaluate_once() -> None:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        try:
            buffer = MollifierBuffer(client, key_prefix=key_prefix)
            start.wait()
            decision = evaluate(buffer, threshold=50)
            assert decision.tripped == (decision.count > 50)
            with lock:
                counts.append(decision.count)
        finally:
            client.close()

    threads = [threading.Thread(target=evaluate_once) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(counts) == list(range(1, 101))


def test_the_window_resets_after_window_ms(buffer: MollifierBuffer, redis_client: redis.Redis) -> None:
    # Given a 60 ms window with two evaluations in it
    assert evaluate(buffer, window_ms=60, threshold=5).count == 1
    assert evaluate(buffer, window_ms=60, threshold=5).count == 2
    counter = buffer.keys.tenant("o", "e").trip_counter
    assert 0 < redis_client.pttl(counter) <= 60

    # When the window has passed, the count starts again
    time.sleep(0.1)
    assert evaluate(buffer, window_ms=60, threshold=5).count == 1


def test_the_window_is_not_extended_by_later_evaluations(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    evaluate(buffer, window_ms=200)
    time.sleep(0.05)
    evaluate(buffer, window_ms=200)

    assert redis_client.pttl(buffer.keys.tenant("o", "e").trip_counter) <= 160


def test_a_tripped_env_stays_tripped_for_the_hold_after_the_window_resets(buffer: MollifierBuffer) -> None:
    # Given an env tripped in a 40 ms window with a 150 ms hold
    options = {"window_ms": 40, "threshold": 1, "hold_ms": 150}
    assert not evaluate(buffer, **options).tripped
    assert evaluate(buffer, **options).tripped

    # When the window resets, the hold keeps it tripped
    time.sleep(0.07)
    assert evaluate(buffer, **options) == TripDecision(True, 1)

    # And once the hold has passed, it is not tripped any more
    time.sleep(0.2)
    assert evaluate(buffer, **options) == TripDecision(False, 1)


def test_every_over_threshold_evaluation_re_arms_the_hold(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    options = {"window_ms": 10_000, "threshold": 1, "hold_ms": 10_000}
    hold = buffer.keys.tenant("o", "e").trip_hold
    evaluate(buffer, **options)
    assert not redis_client.exists(hold)  # not over the threshold: no marker
    assert evaluate(buffer, **options).tripped
    time.sleep(0.05)
    left = redis_client.pttl(hold)
    assert 0 < left <= 9_950

    assert evaluate(buffer, **options).tripped

    assert redis_client.pttl(hold) > left


def test_a_zero_hold_trips_only_while_over_the_threshold(buffer: MollifierBuffer) -> None:
    options = {"window_ms": 40, "threshold": 1, "hold_ms": 0}
    assert evaluate(buffer, **options) == TripDecision(False, 1)
    assert evaluate(buffer, **options) == TripDecision(True, 2)
    time.sleep(0.07)
    assert evaluate(buffer, **options) == TripDecision(False, 1)


def test_evaluations_are_per_org_and_env(buffer: MollifierBuffer) -> None:
    for _ in range(3):
        evaluate(buffer, "a", "prod", threshold=2)

    assert evaluate(buffer, "a", "prod", threshold=2) == TripDecision(True, 4)
    assert evaluate(buffer, "b", "prod", threshold=2) == TripDecision(False, 1)
    assert evaluate(buffer, "a", "dev", threshold=2) == TripDecision(False, 1)


def test_tripped_lists_envs_with_a_live_hold_and_forgets_expired_ones(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    assert buffer.tripped() == []
    evaluate(buffer, "a", "prod", threshold=0, hold_ms=60)
    evaluate(buffer, "b", "dev", threshold=0, hold_ms=10_000)
    evaluate(buffer, "c", "calm", threshold=10)

    assert buffer.tripped() == [Tenant("a", "prod"), Tenant("b", "dev")]

    time.sleep(0.1)
    assert buffer.tripped() == [Tenant("b", "dev")]
    assert redis_client.zcard(buffer.keys.tripped) == 1


def test_trip_and_accept_stores_nothing_while_not_tripped(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    decision, accepted = buffer.evaluate_trip_and_accept(
        "m1", org_id="o", env_id="e", payload=b"x", window_ms=1_000, threshold=1, hold_ms=1_000
    )

    assert (decision, accepted) == (TripDecision(False, 1), False)
    assert buffer.get("m1") is None
    assert buffer.depth() == 0
    # only the window counter exists
    assert redis_client.keys("*") == [buffer.keys.tenant("o", "e").trip_counter.encode()]


def test_trip_and_accept_accepts_once_tripped_and_stays_idempotent(buffer: MollifierBuffer) -> None:
    options = {"window_ms": 1_000, "threshold": 1, "hold_ms": 1_000}
    buffer.evaluate_trip_and_accept("m0", org_id="o", env_id="e", payload=b"0", **options)

    decision, accepted = buffer.evaluate_trip_and_accept(
        "m1", org_id="o", env_id="e", payload=b"1", **options
    )
    assert (decision, accepted) == (TripDecision(True, 2), True)
    again, accepted_again = buffer.evaluate_trip_and_accept(
        "m1", org_id="o", env_id="e", payload=b"other", **options
    )
    assert (again, accepted_again) == (TripDecision(True, 3), False)

    entry = buffer.pop("o", "e")
    assert entry is not None
    assert (entry.message_id, entry.payload) == ("m1", b"1")
    assert buffer.pop("o", "e") is None
    assert buffer.tripped() == [Tenant("o", "e")]


def test_trip_and_accept_respects_entry_ttl(redis_client: redis.Redis, key_prefix: str) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, entry_ttl_s=30)
    buffer.evaluate_trip_and_accept(
        "m1", org_id="o", env_id="e", payload=b"x", window_ms=1_000, threshold=0, hold_ms=1_000
    )

    assert 0 < redis_client.pttl(buffer.keys.entry("m1")) <= 30_000


def test_the_tripped_registry_forgets_expired_holds_without_being_listed(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    evaluate(buffer, "a", "prod", threshold=0, hold_ms=30)
    time.sleep(0.06)

    evaluate(buffer, "b", "prod", threshold=0, hold_ms=10_000)

    assert redis_client.zrange(buffer.keys.tripped, 0, -1) == [b'["b", "prod"]']
