"""What a producer process learns from each fold about the others, on a real Redis (the local
trip evaluator, ``gate/window_view.py``): it folds early once its own sends took a quarter of the
headroom its last fold left, and at once in the send when the others' pace says the fleet is over.

Two :class:`LocalTrip` instances on one buffer stand for two producer processes: each counts and
folds on its own, and they share only the fleet's windows in Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dramatiq_mollifier import MollifierBuffer
from dramatiq_mollifier.breaker import CircuitBreaker
from dramatiq_mollifier.gate.local_trip import LocalTrip, Verdict
from dramatiq_mollifier.gate.window_view import HEADROOM_SHARE
from dramatiq_mollifier.models import Tenant

from .mollifier_helpers import eventually

THRESHOLD = 100
ENV = Tenant("acme", "burst")


def producer(
    buffer: MollifierBuffer, *, fold_interval_ms: int, clock: Callable[[], float] | None = None
) -> LocalTrip:
    """One producer process's evaluator on ``buffer``."""
    return LocalTrip(
        backend=buffer,
        window_ms=60_000,
        threshold=THRESHOLD,
        hold_ms=60_000,
        fold_interval_ms=fold_interval_ms,
        breaker=CircuitBreaker("test"),
        on_error=lambda exc: None,
        **({"clock": clock} if clock is not None else {}),
    )


def window_count(buffer: MollifierBuffer) -> int:
    return int(buffer.client.get(buffer.keys.tenant(ENV.org_id, ENV.env_id).trip_counter) or 0)


def send(trip: LocalTrip, n: int) -> list[Verdict]:
    return [trip.count(ENV, True) for _ in range(n)]


@pytest.mark.redis
def test_a_process_folds_once_its_sends_took_a_share_of_the_headroom_its_last_fold_left(
    buffer: MollifierBuffer,
) -> None:
    # Given two producers folding every 5 s, one of which saw the window at 50 at its last fold,
    # after which the other took it over the threshold
    first, second = producer(buffer, fold_interval_ms=5_000), producer(buffer, fold_interval_ms=5_000)
    assert set(send(first, 50)) == {Verdict.BELOW}
    first.flush()
    eventually(lambda: window_count(buffer) == 50, what="the first producer's folds")
    send(second, THRESHOLD // 2 + 1)
    second.flush()
    eventually(lambda: window_count(buffer) == 101, what="the second producer's folds")

    # When the first sends its share (a quarter) of the 50 its fold left below the threshold
    share = 50 // HEADROOM_SHARE
    assert set(send(first, share)) == {Verdict.BELOW}

    # Then it folds at once, not at its next fold interval, and learns the env diverting: the
    # next send goes to the fused script instead of passing (without this, 38 more would pass)
    eventually(
        lambda: window_count(buffer) == 101 + share, timeout_s=2, what="a fold before the 5 s interval"
    )
    eventually(lambda: first.count(ENV, True) is Verdict.DIVERTING, timeout_s=2, what="the trip learned")


@pytest.mark.redis
def test_the_first_fold_comes_after_a_share_of_the_threshold_not_half_of_it(buffer: MollifierBuffer) -> None:
    # Given a producer folding every 5 s, which has not folded yet
    only = producer(buffer, fold_interval_ms=5_000)

    # When it sends a quarter of the threshold
    send(only, THRESHOLD // HEADROOM_SHARE)

    # Then its fold thread folds them at once: producers that start a burst together learn of
    # one another after a quarter of the threshold each, not after half of it
    eventually(
        lambda: window_count(buffer) == THRESHOLD // HEADROOM_SHARE, timeout_s=2, what="the first fold"
    )


@pytest.mark.redis
def test_a_process_folds_in_the_send_when_the_others_pace_takes_the_fleet_over(
    buffer: MollifierBuffer,
) -> None:
    # Given two producers on one clock, each sending fewer than a quarter of the threshold (no
    # background fold comes by): the first sent 20, then the second 20, which its fold saw
    # arrive from the others over the window so far
    now = [1_000.0]
    first = producer(buffer, fold_interval_ms=10_000, clock=lambda: now[0])
    second = producer(buffer, fold_interval_ms=10_000, clock=lambda: now[0])
    send(first, 20)
    first.flush()
    send(second, 20)
    second.flush()
    assert window_count(buffer) == 40

    # When 30 s pass (the others' pace: 20 per 10 s, the shortest span a pace is measured over,
    # says 60 more came) and the second sends: 41 known, 101 predicted
    now[0] += 30

    # Then the send folds to know (CROSSED), where the counts it knows alone would let it pass
    assert second.count(ENV, True) is Verdict.CROSSED
    decision = second.evaluate(ENV)
    assert (decision.tripped, decision.count) == (False, 41)

    # And the fold's reply corrected the pace (the first sent nothing): no fold per send after a
    # wrong prediction, and the first's own sends were never predicted over
    assert set(send(second, 5)) == {Verdict.BELOW}
    now[0] += 5
    assert set(send(second, 5)) == {Verdict.BELOW}
    assert set(send(first, 5)) == {Verdict.BELOW}


@pytest.mark.redis
def test_a_process_alone_never_predicts_and_still_lets_exactly_the_threshold_through(
    buffer: MollifierBuffer,
) -> None:
    # Given one producer (no one else adds to its windows)
    only = producer(buffer, fold_interval_ms=10)

    # When it sends past the threshold, its background folds coming by every 10 ms
    verdicts = send(only, THRESHOLD)

    # Then exactly the threshold passes, and the next send folds in the send and diverts
    assert set(verdicts) == {Verdict.BELOW}
    assert only.count(ENV, True) is Verdict.CROSSED
    assert only.evaluate(ENV).tripped
