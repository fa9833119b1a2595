"""The local trip evaluator on a real Redis: the fold script, no round trip per send, the exact
count of a single process, shadow mode, the fleet-wide ceiling and fork safety."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier import MollifierBuffer, MollifierConfigurationError, MollifierSettings
from dramatiq_mollifier.breaker import CircuitBreaker
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.buffer.store import FOLD_ENVS_PER_CALL
from dramatiq_mollifier.gate import local_trip
from dramatiq_mollifier.gate.local_trip import LocalTrip
from dramatiq_mollifier.models import Tenant, TripWindow

from .layout_helpers import script_calls
from .mollifier_helpers import add_mollifier, decisions, eventually, fail_opens, fork_with_deadline

TRIP = {"window_ms": 60_000, "threshold": 5, "hold_ms": 60_000}


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def window_count(buffer: MollifierBuffer, org: str, env: str) -> int:
    return int(buffer.client.get(buffer.keys.tenant(org, env).trip_counter) or 0)


# The fold script -------------------------------------------------------------------------------
@pytest.mark.redis
def test_a_fold_adds_each_envs_count_and_reports_its_window_hold_and_backlog(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="acme", env_id="backlogged", payload=b"x")

    fleet, windows = buffer.fold_trip_counts(
        [("acme", "prod", 3), ("acme", "busy", 6), ("acme", "backlogged", 1)], **TRIP
    )

    assert fleet == TripWindow(0, 0, 0)  # no ceiling: the fleet-wide keys are left alone
    assert [(w.count, w.hold_ttl_ms > 0, w.backlog) for w in windows] == [
        (3, False, 0),
        (6, True, 0),
        (1, False, 1),
    ]
    assert all(0 < w.window_ttl_ms <= 60_000 for w in windows)
    # The same state as evaluate_trip leaves: the next evaluation continues the count
    assert buffer.evaluate_trip("acme", "prod", **TRIP).count == 4
    assert buffer.evaluate_trip("acme", "busy", **TRIP).tripped
    assert buffer.tripped() == [Tenant("acme", "busy")]


@pytest.mark.redis
def test_a_fold_of_many_envs_counts_the_fleet_once_in_one_round_trip(buffer: MollifierBuffer) -> None:
    counts = [("acme", f"env-{i}", 2) for i in range(FOLD_ENVS_PER_CALL * 2 + 3)]
    before = script_calls(buffer.client)

    fleet, windows = buffer.fold_trip_counts(counts, **TRIP, global_threshold=1_000)

    # three script calls, pipelined (with slot groups, one more for the fleet-wide window's group)
    assert script_calls(buffer.client) - before == 3 + (1 if buffer.keys.group_count else 0)
    assert fleet.count == 2 * len(counts)
    assert fleet.hold_ttl_ms > 0  # over the ceiling of 1,000
    assert [w.count for w in windows] == [2] * len(counts)
    assert window_count(buffer, "acme", f"env-{len(counts) - 1}") == 2


# The gate with the local evaluator -------------------------------------------------------------
@pytest.mark.redis
def test_sends_below_the_threshold_cost_no_redis_round_trip(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a middleware folding once a second, and nothing tripped
    mollifier, reader = add_mollifier(
        broker, redis_client, key_prefix, trip_threshold=10_000, trip_fold_interval_ms=1_000
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    # When 1,000 enrolled sends go out
    before = script_calls(redis_client)
    started = time.monotonic()
    for _ in range(1_000):
        ingest.send_with_options(org_id="acme", env_id="prod")
    took = time.monotonic() - started
    sent_calls = script_calls(redis_client) - before

    # Then the only script calls were the background folds (one per second at most; another
    # test's middleware may still fold one), and the fleet's window holds every send once folded
    assert sent_calls <= took + 2
    assert decisions(reader) == {("pass_through", "below_threshold", True): 1_000}
    eventually(lambda: window_count(mollifier.buffer, "acme", "prod") == 1_000, what="the counts folded")


@pytest.mark.redis
def test_one_process_lets_exactly_the_threshold_through_then_diverts_with_one_round_trip_per_send(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(broker, redis_client, key_prefix, trip_threshold=20)

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    for _ in range(20):
        ingest.send_with_options(org_id="acme", env_id="prod")
    # Every count of the first 20 folded (the background folds they woke included), so that what
    # follows is counted alone
    mollifier.gate.trip.flush()  # type: ignore[union-attr]
    before = script_calls(redis_client)
    for _ in range(30):
        ingest.send_with_options(org_id="acme", env_id="prod")

    assert broker.queues["default"].qsize() == 20
    assert mollifier.buffer.depth("acme", "prod") == 30
    # The send that crossed: its fold and the write; then the fused script alone
    assert script_calls(redis_client) - before == 2 + 29
    assert decisions(reader)[("mollify", "per_env_rate", True)] == 30


@pytest.mark.redis
def test_a_process_that_saw_an_env_diverting_keeps_diverting_until_its_backlog_is_drained(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given an env tripped by this process, whose hold has expired but whose backlog has not
    mollifier, reader = add_mollifier(
        broker, redis_client, key_prefix, trip_threshold=3, trip_window_ms=100, trip_hold_ms=100
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    for _ in range(6):
        ingest.send_with_options(org_id="acme", env_id="prod")
    hold = mollifier.buffer.keys.tenant("acme", "prod").trip_hold
    eventually(lambda: not redis_client.exists(hold), what="the hold expired")
    time.sleep(0.1)  # and the window (no state to wait on: it is a key that expires)

    # When it sends again below the threshold, the message joins the backlog (sticky)
    ingest.send_with_options(org_id="acme", env_id="prod")
    assert mollifier.buffer.depth("acme", "prod") == 4
    assert broker.queues["default"].qsize() == 3

    # Then, once the backlog is drained, sends pass again and cost no round trip
    drain = DrainProtocol(mollifier.buffer)
    for entry in drain.pop_many("acme", "prod", 10):
        drain.ack(entry.message_id)
    ingest.send_with_options(org_id="acme", env_id="prod")  # the fused script says: cooled
    before = script_calls(redis_client)
    ingest.send_with_options(org_id="acme", env_id="prod")
    assert script_calls(redis_client) - before <= 1  # a background fold at most
    assert broker.queues["default"].qsize() == 5
    assert decisions(reader)[("pass_through", "below_threshold", True)] == 5


@pytest.mark.redis
def test_shadow_mode_logs_from_local_counts_without_a_round_trip(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    mollifier, reader = add_mollifier(
        broker, redis_client, key_prefix, enabled_orgs=set(), shadow_mode=True, trip_threshold=3
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    caplog.set_level("INFO")
    # No background fold runs while the sends go out (the fold thread waits for this lock, and
    # its sends wake it, a quarter of the threshold being one send): every script call counted
    # would be a send's
    trip: Any = mollifier.gate.trip
    with trip._fold_lock:
        before = script_calls(redis_client)
        for _ in range(8):
            ingest.send_with_options(org_id="globex", env_id="prod")
        sent_calls = script_calls(redis_client) - before

    assert sent_calls == 0
    assert broker.queues["default"].qsize() == 8
    assert decisions(reader) == {
        ("pass_through", "below_threshold", False): 3,
        ("shadow_log", "per_env_rate", False): 5,
    }
    assert caplog.text.count("mollifier.would_mollify") == 5


@pytest.mark.redis
def test_a_failed_background_fold_fails_open_and_feeds_the_breaker(
    broker: StubBroker, refused_url: str, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(
        broker, None, key_prefix, redis_url=refused_url, trip_fold_interval_ms=5
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    # Sends below the threshold pass at once; each background fold fails, until the breaker opens
    for _ in range(5):
        ingest.send_with_options(org_id="acme", env_id="prod")
        eventually(lambda: mollifier.gate.trip.flush() is False, what="the count folded or dropped")  # type: ignore[union-attr]

    assert broker.queues["default"].qsize() == 5
    assert decisions(reader) == {("pass_through", "below_threshold", True): 5}
    assert 1 <= fail_opens(reader)[("trip",)] <= 3
    assert mollifier.breaker.is_open


# The fleet-wide ceiling ------------------------------------------------------------------------
@pytest.mark.redis
def test_the_fleet_wide_ceiling_diverts_every_enrolled_env_once_all_together_send_too_much(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(
        broker, redis_client, key_prefix, enabled_orgs={"*"}, trip_threshold=1_000, trip_global_threshold=30
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    # 50 sends over 10 envs of 5 orgs: none near its own threshold
    returned = [ingest.send_with_options(org_id=f"org-{n % 5}", env_id=f"env-{n % 10}") for n in range(50)]

    assert broker.queues["default"].qsize() == 30
    assert mollifier.buffer.depth() == 20
    assert decisions(reader)[("mollify", "global_rate", True)] == 20
    assert [m.options.get("mollifier_reason") for m in returned[30:]] == ["global_rate"] * 20
    eventually(
        lambda: redis_client.exists(mollifier.buffer.keys.global_trip_hold) == 1, what="the fleet-wide hold"
    )


def test_the_fleet_wide_ceiling_is_off_by_default_and_needs_the_local_evaluator() -> None:
    assert MollifierSettings().trip_global_threshold == 0
    with pytest.raises(
        MollifierConfigurationError, match=r"trip_global_threshold .* needs trip_evaluator=local"
    ):
        MollifierSettings(trip_global_threshold=100, trip_evaluator="exact")
    with pytest.raises(MollifierConfigurationError, match="trip_global_threshold"):
        MollifierSettings(trip_global_threshold=-1)


def test_the_fold_interval_is_bounded_by_the_window() -> None:
    assert MollifierSettings().trip_fold_interval_ms == 20
    with pytest.raises(MollifierConfigurationError, match=r"trip_fold_interval_ms .* at most trip_window_ms"):
        MollifierSettings(trip_window_ms=50, trip_fold_interval_ms=60)
    for bad in (0, 1_001):
        with pytest.raises(MollifierConfigurationError, match="trip_fold_interval_ms"):
            MollifierSettings(trip_fold_interval_ms=bad, trip_window_ms=5_000)


# Forks -----------------------------------------------------------------------------------------
def _child(trip: LocalTrip, buffer: MollifierBuffer) -> int:
    """In a forked child: count 7 sends of another env; its own thread must fold them (alone)."""
    for _ in range(7):
        trip.count(Tenant("acme", "child"), True)
    deadline = time.monotonic() + 20
    while window_count(buffer, "acme", "child") < 7:
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.01)
    return 0 if window_count(buffer, "acme", "child") == 7 else 4


@pytest.mark.redis
def test_a_forked_child_shares_no_counts_and_folds_its_own(
    broker: StubBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a process with 5 sends counted and not folded yet (its fold runs once a second)
    mollifier, _ = add_mollifier(
        broker, redis_client, key_prefix, trip_threshold=100, trip_fold_interval_ms=1_000
    )
    trip: Any = mollifier.gate.trip
    for _ in range(5):
        trip.count(Tenant("acme", "parent"), True)

    # When it forks a child that counts sends of its own
    pid = fork_with_deadline()
    if pid == 0:  # pragma: no cover - the child
        code = 2
        try:
            code = _child(trip, mollifier.buffer)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    # Then the child folded its 7 with a thread of its own, and not the parent's 5: they are
    # folded once, by the parent
    assert os.waitstatus_to_exitcode(status) == 0
    eventually(lambda: window_count(mollifier.buffer, "acme", "parent") == 5, what="the parent's fold")
    trip.flush()
    assert window_count(mollifier.buffer, "acme", "parent") == 5
    assert window_count(mollifier.buffer, "acme", "child") == 7


class _NoFold:
    def fold_trip_counts(self, counts: Any, **trip: int) -> Any:
        raise AssertionError("no fold expected")


def without_fold_thread(backend: Any) -> LocalTrip:
    """A LocalTrip over ``backend`` whose counts fold only when the test flushes them."""
    trip = LocalTrip(
        backend=backend,
        fold_interval_ms=1_000,
        breaker=CircuitBreaker("test"),
        on_error=lambda exc: None,
        **TRIP,
    )
    trip._running = True
    return trip


def test_the_per_env_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_trip, "MAX_ENVS", 3)
    trip = without_fold_thread(_NoFold())  # the counts stay pending

    for env in range(10):
        trip.count(Tenant("acme", f"env-{env}"), True)
        assert len(trip._envs) <= 3
    # Dropped counts are dropped from the fleet's total too
    assert trip._fleet.pending == sum(w.pending for w in trip._envs.values())


class _QuietFold:
    """Every env folded is below its threshold, with no hold and no backlog (pure policy)."""

    def fold_trip_counts(self, counts: Any, **trip: int) -> Any:
        return TripWindow(0, 0, 0), [TripWindow(count, 60_000, 0) for _, _, count in counts]


def test_a_full_table_keeps_the_envs_it_saw_diverting(monkeypatch: pytest.MonkeyPatch) -> None:
    # They were dropped with the rest (a diverting env has no counts of its own to fold): after
    # sends to 10,000 other envs, a backlogged env's next sends overtook its backlog
    monkeypatch.setattr(local_trip, "MAX_ENVS", 3)
    trip = without_fold_thread(_QuietFold())  # each count is folded below
    backlogged = Tenant("acme", "prod")
    trip.divert(backlogged)

    for env in range(10):
        trip.count(Tenant("acme", f"env-{env}"), True)
        assert trip.flush()
        assert len(trip._envs) <= 3

    assert trip.count(backlogged, True) is local_trip.Verdict.DIVERTING
