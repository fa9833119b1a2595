"""The trip evaluator: a fixed window per (org, env), a strict threshold, a hold."""

from __future__ import annotations

import threading

import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.models import Tenant, TripDecision

from .layout_helpers import all_keys, entry_key, group, org_beside
from .mollifier_helpers import eventually, wait_past, wait_server_ms


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
    start = threading.Barrier(100, timeout=60)  # one thread failing before it must not strand 99

    def evaluate_once() -> None:
        client = client_from_url(redis_url, socket_timeout=5)
        try:
            buffer = MollifierBuffer(client, key_prefix=key_prefix)
            start.wait()
            decision = evaluate(buffer, threshold=50)
            assert decision.tripped == (decision.count > 50)
            with lock:
                counts.append(decision.count)
        finally:
            client.close()

    threads = [threading.Thread(target=evaluate_once, daemon=True) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(counts) == list(range(1, 101))


def test_the_window_resets_after_window_ms(buffer: MollifierBuffer, redis_client: redis.Redis) -> None:
    # Given a 300 ms window with two evaluations in it (wide enough for a busy CI machine)
    assert evaluate(buffer, window_ms=300, threshold=5).count == 1
    assert evaluate(buffer, window_ms=300, threshold=5).count == 2
    counter = buffer.keys.tenant("o", "e").trip_counter
    assert 0 < redis_client.pttl(counter) <= 300

    # When the window has passed, the count starts again
    eventually(lambda: not redis_client.exists(counter), what="the window to pass")
    assert evaluate(buffer, window_ms=300, threshold=5).count == 1


def test_the_window_is_not_extended_by_later_evaluations(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    evaluate(buffer, window_ms=200)
    wait_server_ms(redis_client, 50)  # time passing is the point: a later evaluation
    evaluate(buffer, window_ms=200)

    assert redis_client.pttl(buffer.keys.tenant("o", "e").trip_counter) <= 160


def test_a_tripped_env_stays_tripped_for_the_hold_after_the_window_resets(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # Given an env tripped in a 200 ms window with a 750 ms hold
    options = {"window_ms": 200, "threshold": 1, "hold_ms": 750}
    keys = buffer.keys.tenant("o", "e")
    assert not evaluate(buffer, **options).tripped
    assert evaluate(buffer, **options).tripped

    # When the window resets, the hold keeps it tripped
    eventually(lambda: not redis_client.exists(keys.trip_counter), what="the window to reset")
    assert evaluate(buffer, **options) == TripDecision(True, 1)

    # And once the hold has passed, it is not tripped any more
    eventually(lambda: not redis_client.exists(keys.trip_hold), what="the hold to pass")
    eventually(lambda: not redis_client.exists(keys.trip_counter), what="the window to reset")
    assert evaluate(buffer, **options) == TripDecision(False, 1)


def test_every_over_threshold_evaluation_re_arms_the_hold(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    options = {"window_ms": 10_000, "threshold": 1, "hold_ms": 10_000}
    hold = buffer.keys.tenant("o", "e").trip_hold
    evaluate(buffer, **options)
    assert not redis_client.exists(hold)  # not over the threshold: no marker
    assert evaluate(buffer, **options).tripped
    wait_server_ms(redis_client, 50)  # time passing is the point: the re-arm must show
    left = redis_client.pttl(hold)
    assert 0 < left <= 9_950

    assert evaluate(buffer, **options).tripped

    assert redis_client.pttl(hold) > left


def test_a_zero_hold_trips_only_while_over_the_threshold(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    options = {"window_ms": 200, "threshold": 1, "hold_ms": 0}
    assert evaluate(buffer, **options) == TripDecision(False, 1)
    assert evaluate(buffer, **options) == TripDecision(True, 2)
    counter = buffer.keys.tenant("o", "e").trip_counter
    eventually(lambda: not redis_client.exists(counter), what="the window to reset")
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
    # a's hold outlasts a stall of the loaded machine between these calls (300 ms did not once)
    evaluate(buffer, "a", "prod", threshold=0, hold_ms=1_000)
    evaluate(buffer, "b", "dev", threshold=0, hold_ms=10_000)
    evaluate(buffer, "c", "calm", threshold=10)

    assert buffer.tripped() == [Tenant("a", "prod"), Tenant("b", "dev")]

    # Past a's hold and its registry deadline (at most 1.5 holds), on the server's clock
    a_deadline = redis_client.zscore(
        group(buffer, "a").tripped, buffer.keys.tenant("a", "prod").tripped_member
    )
    assert a_deadline is not None
    wait_past(buffer, a_deadline)
    assert buffer.tripped() == [Tenant("b", "dev")]
    assert sum(redis_client.zcard(space.tripped) for space in buffer.keys.groups) == 1


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
    assert all_keys(redis_client) == [buffer.keys.tenant("o", "e").trip_counter.encode()]


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

    entry = DrainProtocol(buffer).pop("o", "e")
    assert entry is not None
    assert (entry.message_id, entry.payload) == ("m1", b"1")
    assert DrainProtocol(buffer).pop("o", "e") is None
    assert buffer.tripped() == [Tenant("o", "e")]


def test_trip_and_accept_accepts_below_the_threshold_while_the_hold_lives(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # Given an env tripped with a long hold, whose window then resets
    options = {"window_ms": 10_000, "threshold": 1, "hold_ms": 10_000}
    for n in range(2):
        buffer.evaluate_trip_and_accept(f"m{n}", org_id="o", env_id="e", payload=b"x", **options)
    redis_client.delete(buffer.keys.tenant("o", "e").trip_counter)

    # When the next send counts 1, below the threshold
    decision, accepted = buffer.evaluate_trip_and_accept(
        "m2", org_id="o", env_id="e", payload=b"2", **options
    )

    # Then it is tripped by the hold, and the entry is stored: a diverted send is never dropped
    assert (decision, accepted) == (TripDecision(True, 1), True)
    entry = buffer.get("m2")
    assert entry is not None
    assert entry.payload == b"2"
    assert buffer.depth("o", "e") == 2


def test_trip_and_accept_respects_entry_ttl(redis_client: redis.Redis, key_prefix: str) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, entry_ttl_s=30)
    buffer.evaluate_trip_and_accept(
        "m1", org_id="o", env_id="e", payload=b"x", window_ms=1_000, threshold=0, hold_ms=1_000
    )

    assert 0 < redis_client.pttl(entry_key(buffer, "m1")) <= 30_000


def test_the_tripped_registry_forgets_expired_holds_without_being_listed(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    evaluate(buffer, "a", "prod", threshold=0, hold_ms=30)
    a_deadline = redis_client.zscore(
        group(buffer, "a").tripped, buffer.keys.tenant("a", "prod").tripped_member
    )
    assert a_deadline is not None
    wait_past(buffer, a_deadline)

    b = org_beside(buffer, "a", "b")  # its evaluation is the one that sees a's registry
    evaluate(buffer, b, "prod", threshold=0, hold_ms=10_000)

    assert redis_client.zrange(group(buffer, "a").tripped, 0, -1) == [f"{len(b)}:{b}:prod".encode()]


def test_a_tripped_env_writes_the_registry_once_per_half_hold_not_on_every_send(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    # An hour's hold: the deadline moves in half-hold steps, and a step boundary crossed during
    # these six calls (a 1 in 10^5 chance at an hour, 1 in 50 at 10 s) would move it honestly.
    options = {"threshold": 0, "hold_ms": 3_600_000}
    t = buffer.keys.tenant("o", "e")
    evaluate(buffer, **options)
    score = redis_client.zscore(group(buffer).tripped, t.tripped_member)
    assert score is not None

    for _ in range(5):
        assert evaluate(buffer, **options).tripped

    # Then the registry is as the first trip left it, and its deadline still covers the marker,
    # whose value is that deadline
    assert redis_client.zscore(group(buffer).tripped, t.tripped_member) == score
    assert redis_client.get(t.trip_hold) == b"%d" % score
    server_ms = redis_client.time()
    now_ms = server_ms[0] * 1000 + server_ms[1] // 1000
    assert now_ms + redis_client.pttl(t.trip_hold) <= score <= now_ms + 3_600_000 * 3 // 2


def test_the_registry_moves_its_deadline_when_the_hold_would_outlive_it(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    options = {"threshold": 0, "hold_ms": 100}
    member = buffer.keys.tenant("o", "e").tripped_member
    evaluate(buffer, **options)
    first = redis_client.zscore(group(buffer).tripped, member)
    assert first is not None

    # Re-armed more than half a hold later (on the server's clock): the deadline moves with it
    wait_server_ms(redis_client, 60)
    evaluate(buffer, **options)
    later = redis_client.zscore(group(buffer).tripped, member)
    assert later is not None
    assert later > first
    assert buffer.tripped() == [Tenant("o", "e")]


def test_tripped_checks_each_marker_not_only_the_registry(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    evaluate(buffer, "a", "prod", threshold=0, hold_ms=10_000)
    evaluate(buffer, "b", "prod", threshold=0, hold_ms=10_000)

    # When a marker is gone while its registry deadline has not passed yet
    redis_client.delete(buffer.keys.tenant("a", "prod").trip_hold)

    # Then only the live one is listed
    assert buffer.tripped() == [Tenant("b", "prod")]
    # And the next trip of the env writes the registry again
    evaluate(buffer, "a", "prod", threshold=0, hold_ms=10_000)
    assert buffer.tripped() == [Tenant("a", "prod"), Tenant("b", "prod")]


def test_an_env_with_a_backlog_keeps_diverting_below_the_threshold_until_it_is_drained(
    buffer: MollifierBuffer,
) -> None:
    # Given an env that tripped (no hold: only the window count trips it) and buffered one entry
    options = {"window_ms": 10_000, "hold_ms": 0}
    decision, accepted = buffer.evaluate_trip_and_accept(
        "m0", org_id="o", env_id="e", payload=b"p", threshold=0, **options
    )
    assert decision.tripped and accepted

    # When it sends again far below a threshold it cannot reach
    decision, accepted = buffer.evaluate_trip_and_accept(
        "m1", org_id="o", env_id="e", payload=b"p", threshold=1_000, **options
    )

    # Then the message joins the backlog behind m0 instead of overtaking it
    assert decision.tripped and accepted
    drain = DrainProtocol(buffer)
    assert [entry.message_id for entry in drain.pop_many("o", "e", 10)] == ["m0", "m1"]
    # And another env of the org is not held by it
    other, _ = buffer.evaluate_trip_and_accept(
        "n0", org_id="o", env_id="f", payload=b"p", threshold=1_000, **options
    )
    assert not other.tripped

    # When the backlog is drained, the env passes through again
    drain.ack("m0", org_id="o", env_id="e")
    assert buffer.evaluate_trip_and_accept(
        "m2", org_id="o", env_id="e", payload=b"p", threshold=1_000, **options
    )[0].tripped
    for message_id in ("m1", "m2"):
        drain.ack(message_id, org_id="o", env_id="e")
    decision, accepted = buffer.evaluate_trip_and_accept(
        "m3", org_id="o", env_id="e", payload=b"p", threshold=1_000, **options
    )
    assert decision.tripped is False and accepted is False


def test_evaluate_trip_says_tripped_while_the_env_has_a_backlog(buffer: MollifierBuffer) -> None:
    # The exact evaluator's script ignored the backlog: once the hold was over, a process without
    # a recent trip of its own sent past the env's buffered entries for as long as they lasted
    options = {"window_ms": 10_000, "threshold": 1_000, "hold_ms": 0}
    assert not buffer.evaluate_trip("o", "e", **options).tripped
    buffer.accept("m0", org_id="o", env_id="e", payload=b"p")

    assert buffer.evaluate_trip("o", "e", **options).tripped
    assert not buffer.evaluate_trip("o", "other", **options).tripped  # another env is not held

    drain = DrainProtocol(buffer)
    entry = drain.pop("o", "e")
    assert entry is not None
    assert buffer.evaluate_trip("o", "e", **options).tripped  # draining still counts
    drain.ack("m0", org_id="o", env_id="e")
    decision = buffer.evaluate_trip("o", "e", **options)
    assert not decision.tripped and decision.count == 4
