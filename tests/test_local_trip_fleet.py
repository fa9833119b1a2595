"""The local trip evaluator's bounds with several producer processes forked from one parent (as
gunicorn or uwsgi fork their workers), on a real Redis: the README's "Trip evaluators" section."""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier import Mollifier
from dramatiq_mollifier.buffer.clients import client_from_url

from .mollifier_helpers import add_mollifier

PRODUCERS = 4
THRESHOLD = 40
#: Phase one: each producer's share of a burst, every producer under the threshold on its own.
SHARE = THRESHOLD // PRODUCERS + 1
#: Phase three: sends after a producer first diverted, all of which must divert too.
AFTER = 30


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def producer(mollifier: Mollifier, actor: Any, barrier: Any, results: Any) -> None:
    """One forked producer: :func:`produce`, its report or its error sent to the parent."""
    try:
        produce(mollifier, actor, barrier, results)
    except BaseException:
        results.put({"error": traceback.format_exc()})
        raise


def produce(mollifier: Mollifier, actor: Any, barrier: Any, results: Any) -> None:
    """Its share of the burst, then paced sends until it learns of the trip."""
    hold = mollifier.buffer.keys.tenant("acme", "burst").trip_hold
    client = client_from_url(mollifier.settings.redis_url)

    def send() -> bool:
        return not actor.send_with_options(org_id="acme", env_id="burst").options.get("mollified", False)

    result: dict[str, Any] = {"share_passed": sum(send() for _ in range(SHARE))}
    barrier.wait(timeout=60)
    # Phase two: once the fleet's folds have tripped the env in Redis, send one message every
    # millisecond until this process's own fold tells it: the sends that still pass are the ones
    # of about one fold interval
    deadline = time.monotonic() + 20
    while not client.exists(hold):
        if time.monotonic() > deadline:
            results.put({"error": "the env never tripped in Redis"})
            return
        time.sleep(0.001)
    seen = time.monotonic()
    passed_after = 0
    while send():
        passed_after += 1
        if time.monotonic() > deadline:
            results.put({"error": "this producer never learned the trip"})
            return
        time.sleep(0.001)
    result["learned_ms"] = (time.monotonic() - seen) * 1000
    result["passed_after_trip"] = passed_after
    # Phase three: having seen the env diverting, this producer never lets one through again
    result["passed_later"] = sum(send() for _ in range(AFTER))
    results.put(result)


@pytest.mark.redis
def test_forked_producers_share_one_fleet_wide_threshold_within_the_documented_bounds(
    broker: StubBroker, redis_url: str, key_prefix: str
) -> None:
    # Given a middleware built in the parent, which sent and counted before forking
    mollifier, _ = add_mollifier(
        broker,
        None,
        key_prefix,
        redis_url=redis_url,
        trip_threshold=THRESHOLD,
        trip_window_ms=60_000,
        trip_hold_ms=60_000,
        trip_fold_interval_ms=10,
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    for _ in range(5):
        ingest.send_with_options(org_id="acme", env_id="other")

    # When 4 forked producers each send a share of a burst (each under the threshold alone), then
    # keep sending until they learn, each from its own fold, that the env tripped
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PRODUCERS)
    results = context.Queue()
    processes = [
        context.Process(target=producer, args=(mollifier, ingest, barrier, results), daemon=True)
        for _ in range(PRODUCERS)
    ]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        assert [process.exitcode for process in processes] == [0] * PRODUCERS
    finally:
        # A producer stuck after a fork would otherwise outlive the test (and hold pytest's exit).
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()

    # Then
    print(reports)
    assert all("error" not in report for report in reports), reports
    passed = sum(r["share_passed"] + r["passed_after_trip"] + r["passed_later"] for r in reports)
    sent = PRODUCERS * (SHARE + AFTER + 1) + sum(r["passed_after_trip"] for r in reports)
    # Phase one: nothing diverted before the fleet's count was over the threshold (a producer
    # that folded before its share's last send may have learned it over); overall the documented
    # bound, at most the threshold per process and window
    assert sum(r["share_passed"] for r in reports) >= THRESHOLD
    assert passed <= PRODUCERS * THRESHOLD
    # Phase two: every producer learned the trip from its own background fold
    assert all(r["passed_after_trip"] < THRESHOLD for r in reports)
    # Phase three: a producer that has seen the env diverting keeps its later sends behind the
    # backlog (sticky, no overtaking)
    assert [r["passed_later"] for r in reports] == [0] * PRODUCERS
    # Nothing lost, nothing counted twice: the buffer holds every diverted send, and the fleet's
    # window every send of the env (the parent's "other" env sends are its own)
    assert mollifier.buffer.depth("acme", "burst") == sent - passed
    counter = mollifier.buffer.keys.tenant("acme", "burst").trip_counter
    assert int(mollifier.buffer.client.get(counter) or 0) == sent
    # And the parent's own counts were folded once, by the parent
    mollifier.gate.trip.flush()  # type: ignore[union-attr]
    other = mollifier.buffer.keys.tenant("acme", "other").trip_counter
    assert int(mollifier.buffer.client.get(other) or 0) == 5
