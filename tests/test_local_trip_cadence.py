"""How often the local trip evaluator folds, on a real Redis: every slow interval while every env
it counts is far below its threshold, every fold interval once one is at half of it or more (the
README's "Trip evaluators": what the detection bound rests on)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from dramatiq_mollifier import MollifierBuffer
from dramatiq_mollifier.breaker import CircuitBreaker
from dramatiq_mollifier.gate import local_trip as local_trip_module
from dramatiq_mollifier.gate.local_trip import SLOW_FOLD_INTERVAL_MS, LocalTrip
from dramatiq_mollifier.models import Tenant, TripWindow

from .mollifier_helpers import eventually

FOLD_MS = 10
THRESHOLD = 1_000
ENV = Tenant("acme", "prod")


class RecordingFolds:
    """The real buffer's fold, with the time and counts of each call recorded."""

    def __init__(self, buffer: MollifierBuffer) -> None:
        self._buffer = buffer
        self._lock = threading.Lock()
        self.folds: list[tuple[float, int]] = []

    def fold_trip_counts(
        self, counts: Sequence[tuple[str, str, int]], **trip: Any
    ) -> tuple[TripWindow, list[TripWindow]]:
        reply = self._buffer.fold_trip_counts(counts, **trip)
        with self._lock:
            self.folds.append((time.monotonic(), sum(n for _, _, n in counts)))
        return reply

    def since(self, started: float) -> list[tuple[float, int]]:
        with self._lock:
            return [fold for fold in self.folds if fold[0] >= started]


@pytest.fixture
def folds(buffer: MollifierBuffer) -> Iterator[RecordingFolds]:
    yield RecordingFolds(buffer)


def local_trip(folds: RecordingFolds, *, global_threshold: int = 0) -> LocalTrip:
    return LocalTrip(
        backend=folds,
        window_ms=60_000,
        threshold=THRESHOLD,
        hold_ms=60_000,
        fold_interval_ms=FOLD_MS,
        global_threshold=global_threshold,
        breaker=CircuitBreaker("test"),
        on_error=lambda exc: None,
    )


def send_for(trip: LocalTrip, tenant: Tenant, seconds: float) -> int:
    """One send every 2 ms for ``seconds``; how many."""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        trip.count(tenant, True)
        sent += 1
        time.sleep(0.002)
    return sent


@pytest.mark.redis
def test_far_below_the_threshold_a_process_folds_every_slow_interval(folds: RecordingFolds) -> None:
    # Given a process whose only env stays far below its threshold
    trip = local_trip(folds)
    assert trip.fold_interval_s == SLOW_FOLD_INTERVAL_MS / 1000

    # When it sends one message every 2 ms for 0.8 s
    started = time.monotonic()
    sent = send_for(trip, ENV, 0.8)
    assert sent < THRESHOLD // 2

    # Then it folded about every 100 ms (8 times), not every 10 ms (80 times), and every count
    # reached the fleet's window
    count = len(folds.since(started))
    assert 2 <= count <= 0.8 * 1000 / SLOW_FOLD_INTERVAL_MS + 3, folds.since(started)
    trip.flush()
    assert sum(n for _, n in folds.since(started)) == sent


@pytest.mark.redis
def test_at_half_the_threshold_a_process_folds_at_once_then_every_fold_interval(
    folds: RecordingFolds, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a process folding slowly (every 2 s here, so "at once" is told from "at the next slow
    # fold" with room for a loaded machine), its env below half its threshold
    monkeypatch.setattr(local_trip_module, "SLOW_FOLD_INTERVAL_MS", 2_000)
    trip = local_trip(folds)
    for _ in range(THRESHOLD // 2 - 1):
        trip.count(ENV, True)
    eventually(lambda: bool(folds.folds), what="a first (slow) fold")
    folded = sum(n for _, n in folds.folds)

    # When its estimate reaches half the threshold
    started = time.monotonic()
    for _ in range(THRESHOLD // 2 - folded + 1):
        trip.count(ENV, True)

    # Then it folds without waiting out the slow interval, and from then on every fold interval
    soon = 2_000 / 1000 * 0.9
    eventually(lambda: bool(folds.since(started)), timeout_s=soon, what="a fold before the slow interval")
    assert trip.fold_interval_s == FOLD_MS / 1000
    fast_started = time.monotonic()
    send_for(trip, ENV, 0.4)
    assert len(folds.since(fast_started)) >= 0.4 * 1000 / 100 * 2, folds.since(fast_started)


@pytest.mark.redis
def test_the_fleet_at_half_the_ceiling_folds_every_fold_interval_too(folds: RecordingFolds) -> None:
    # Given a ceiling of 100 over every env, and one env far below its own threshold
    trip = local_trip(folds, global_threshold=100)

    # When the fleet's total reaches half the ceiling, spread over many envs
    for env in range(50):
        trip.count(Tenant("acme", f"env-{env}"), True)

    # Then the process folds every fold interval
    assert trip.fold_interval_s == FOLD_MS / 1000
    eventually(lambda: sum(n for _, n in folds.folds) == 50, timeout_s=5, what="the counts folded")
    assert trip.fold_interval_s == FOLD_MS / 1000
