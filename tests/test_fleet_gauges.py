"""Dwell as a signal: the oldest entry's age (total and the oldest envs), dead letters and depth,
reported once for the fleet by the process holding a short lease, read through the SDK's
in-memory reader."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from dramatiq_mollifier import telemetry as telemetry_module
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.gauges import FleetGauges
from dramatiq_mollifier.drain.hooks import DrainHooks
from dramatiq_mollifier.drain.pace import DrainPace
from dramatiq_mollifier.telemetry import Telemetry

from .mollifier_helpers import data_points, eventually, metrics


def gauge(reader: InMemoryMetricReader, name: str) -> dict[Any, int]:
    """The gauge's points by their ``rank`` attribute (None for none)."""
    return {point.attributes.get("rank"): int(point.value) for _, point in data_points(reader, name)}


def age(buffer: MollifierBuffer, message_id: str, age_ms: int, org_id: str = "acme") -> None:
    """Make an entry of ``org_id`` look ``age_ms`` old (its entry hash is in the org's group)."""
    seconds, micros = buffer.client.time()
    now_ms = seconds * 1000 + micros // 1000
    buffer.client.hset(buffer.keys.group_of(org_id).entry(message_id), "created_at_ms", now_ms - age_ms)


def fill(buffer: MollifierBuffer) -> None:
    for env, age_ms in (("a", 40_000), ("b", 30_000), ("c", 20_000), ("d", 10_000)):
        for n in range(3):
            buffer.accept(f"{env}{n}", org_id="acme", env_id=env, payload=b"x")
        age(buffer, f"{env}0", age_ms)
    drain = DrainProtocol(buffer)
    for n in range(2):
        buffer.accept(f"dead{n}", org_id="globex", env_id="prod", payload=b"x")
        drain.pop("globex", "prod")
        drain.fail(f"dead{n}", code="E", message="m")


def test_the_lease_holder_reports_depth_dwell_and_dead_letters(buffer: MollifierBuffer) -> None:
    fill(buffer)
    provider, reader = metrics()
    gauges = FleetGauges(buffer, Telemetry(provider))

    assert gauges.report()

    assert gauge(reader, "mollifier.buffer.depth") == {None: 12}
    assert gauge(reader, "mollifier.buffer.dead_letters") == {None: 2}
    (oldest,) = gauge(reader, "mollifier.buffer.oldest_age").values()
    assert 40_000 <= oldest < 45_000
    ranked = gauge(reader, "mollifier.buffer.oldest_env_age")
    assert sorted(ranked) == ["1", "2", "3"]
    assert 40_000 <= ranked["1"] < 45_000
    assert 30_000 <= ranked["2"] < 35_000
    assert 20_000 <= ranked["3"] < 25_000


def test_only_one_process_reports_and_another_takes_over_when_it_stops(buffer: MollifierBuffer) -> None:
    fill(buffer)
    first_provider, first = metrics()
    second_provider, second = metrics()
    one = FleetGauges(buffer, Telemetry(first_provider), lease_ms=300)
    other = FleetGauges(buffer, Telemetry(second_provider), lease_ms=300)

    assert one.report()
    assert not other.report()
    assert gauge(first, "mollifier.buffer.depth") == {None: 12}
    assert gauge(second, "mollifier.buffer.depth") == {}  # a dashboard summing processes sees 12

    # The holder stops reporting (it died): the other takes over once the lease lapses
    began = time.monotonic()
    eventually(other.report, 3, "the other process to take the lease over")
    assert time.monotonic() - began < 1.5
    assert gauge(second, "mollifier.buffer.depth") == {None: 12}
    assert not one.report()
    # ...and the first, which lost the lease, no longer exports its old values (the SDK kept a
    # synchronous gauge's last value: a summing dashboard showed the depth twice)
    for name in (
        "mollifier.buffer.depth",
        "mollifier.buffer.oldest_env_age",
        "mollifier.buffer.dead_letters",
    ):
        assert gauge(first, name) == {}, name
    assert gauge(second, "mollifier.buffer.depth") == {None: 12}


def test_ranks_no_env_holds_any_more_are_dropped(buffer: MollifierBuffer) -> None:
    fill(buffer)
    provider, reader = metrics()
    gauges = FleetGauges(buffer, Telemetry(provider), dwell_interval_ms=0)
    assert gauges.report()
    assert sorted(gauge(reader, "mollifier.buffer.oldest_env_age")) == ["1", "2", "3"]

    # Only env d keeps queued entries: rank 1 alone, not the old ranks 2 and 3 beside it
    drain = DrainProtocol(buffer)
    for env in ("a", "b", "c"):
        for entry in drain.pop_many("acme", env, 10):
            drain.ack(entry.message_id)
    assert gauges.report()
    assert sorted(gauge(reader, "mollifier.buffer.oldest_env_age")) == ["1"]


def test_a_reading_not_renewed_is_no_longer_exported(
    buffer: MollifierBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process whose drainer stopped (a worker shutting down) kept exporting its last depth.
    provider, reader = metrics()
    telemetry = Telemetry(provider)
    telemetry.record_depth(7)
    telemetry.record_outstanding(3, budget=40)
    assert gauge(reader, "mollifier.buffer.depth") == {None: 7}
    assert gauge(reader, "mollifier.drain.outstanding") == {None: 3}
    monkeypatch.setattr(telemetry_module, "READING_TTL_MS", 0)
    assert gauge(reader, "mollifier.buffer.depth") == {}
    assert gauge(reader, "mollifier.drain.outstanding") == {}


def test_the_drainer_reports_through_the_fleet_gauges(buffer: MollifierBuffer) -> None:
    fill(buffer)
    provider, reader = metrics()
    telemetry = Telemetry(provider)
    drainer = MollifierDrainer(
        buffer,
        lambda entry: None,
        telemetry=telemetry,
        hooks=DrainHooks(report_gauges=FleetGauges(buffer, telemetry).report),
    )
    drainer.run_once()
    (oldest,) = gauge(reader, "mollifier.buffer.oldest_age").values()
    assert oldest >= 40_000
    assert gauge(reader, "mollifier.buffer.dead_letters") == {None: 2}


def test_the_drain_budget_in_use_is_reported_once_for_the_fleet_and_reads_0_when_idle(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Every draining process set the fleet's budget in use at its claims (a summing dashboard
    # multiplied it), and it stayed at its last value after the drain: 22 where 0 were in use.
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=10)
    first_provider, first = metrics()
    second_provider, second = metrics()
    one_telemetry, other_telemetry = Telemetry(first_provider), Telemetry(second_provider)
    one = FleetGauges(buffer, one_telemetry, in_use=pace.in_use)
    other = FleetGauges(buffer, other_telemetry, in_use=pace.in_use)
    claim = pace.claim(4)
    ids = [f"m{n}" for n in range(4)]
    pace.bind(claim, ids)
    pace.landed(ids)
    for telemetry in (one_telemetry, other_telemetry):  # each drainer records its claims
        telemetry.record_outstanding(claim.in_use, budget=claim.budget)

    assert one.report()
    assert not other.report()
    assert gauge(first, "mollifier.drain.outstanding") == {None: 4}
    assert gauge(first, "mollifier.drain.budget") == {None: 10}
    assert gauge(second, "mollifier.drain.outstanding") == {}
    assert gauge(second, "mollifier.drain.budget") == {}

    pace.release(ids)  # the workers started them: nothing in use, no claim since
    assert one.report()
    assert gauge(first, "mollifier.drain.outstanding") == {None: 0}


def test_two_telemetries_of_one_provider_share_the_gauges() -> None:
    # Observable instruments register once per provider with the first callbacks: a second
    # Mollifier in the process (another broker) would have exported nothing.
    provider, reader = metrics()
    Telemetry(provider).record_depth(3)
    Telemetry(provider).record_depth(5)
    assert gauge(reader, "mollifier.buffer.depth") == {None: 5}  # the last value set, as before
