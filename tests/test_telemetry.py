"""Telemetry read through the OpenTelemetry SDK: bounded attributes, units, rate-limited logs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.telemetry import (
    DrainResultKind,
    FailOpenStage,
    Outcome,
    Reason,
    Telemetry,
    ThrottledLog,
)

from .mollifier_helpers import data_points, metrics

README = Path(__file__).resolve().parents[1] / "README.md"
ORG = "org-7f3a9c-distinctive"
ENV = "env-b81d4e-distinctive"


def test_no_tenant_or_message_id_ever_becomes_a_metric_attribute(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a middleware that sees every kind of decision for distinctive tenant ids
    provider, reader = metrics()
    settings = MollifierSettings(
        enabled=True, enabled_orgs={ORG}, shadow_mode=True, key_prefix=key_prefix, trip_threshold=2
    )
    broker = StubBroker()
    broker.add_middleware(Mollifier(settings, client=redis_client, meter_provider=provider))

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    @dramatiq.actor(broker=broker, mollifier=False)
    def audit() -> None: ...

    sent = [ingest.send_with_options(org_id=ORG, env_id=ENV) for _ in range(5)]
    sent += [ingest.send_with_options(org_id=f"{ORG}-shadow", env_id=ENV) for _ in range(5)]
    sent += [ingest.send_with_options(org_id=ORG, env_id=ENV, delay=10), ingest.send(), audit.send()]
    # A failing Redis for the fail-open paths
    # threshold 0: the first send evaluates at once (the local evaluator calls Redis no sooner)
    broken = Mollifier(
        MollifierSettings(**{**settings.model_dump(), "trip_threshold": 0}),
        client=redis.Redis(port=1, retry=None, socket_connect_timeout=0.2),
        meter_provider=provider,
    )
    broken_broker = StubBroker()
    broken_broker.add_middleware(broken)

    @dramatiq.actor(broker=broken_broker)
    def other() -> None: ...

    sent.append(other.send_with_options(org_id=ORG, env_id=ENV))
    sent.append(other.send_with_options(org_id=f"{ORG}-runtime", env_id=ENV))

    # Then no attribute value of any data point names a tenant or a message
    forbidden = {ORG, ENV} | {m.message_id for m in sent}
    points = list(data_points(reader))
    assert {name for name, _ in points} >= {
        "mollifier.decisions",
        "mollifier.buffered",
        "mollifier.fail_open",
    }
    for name, point in points:
        for key, value in point.attributes.items():
            assert not any(f in str(value) or f in key for f in forbidden), (name, key, value)
    broker.close()
    broken_broker.close()


def test_decision_attributes_come_from_a_bounded_set(redis_client: redis.Redis, key_prefix: str) -> None:
    provider, reader = metrics()
    broker = StubBroker()
    settings = MollifierSettings(enabled=True, enabled_orgs={"*"}, key_prefix=key_prefix, trip_threshold=3)
    broker.add_middleware(Mollifier(settings, client=redis_client, meter_provider=provider))

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    for n in range(200):
        ingest.send_with_options(org_id=f"org-{n % 50}", env_id=f"env-{n % 7}")

    allowed = {
        "outcome": {o.value for o in Outcome},
        "reason": {r.value for r in Reason},
        "enrolled": {True, False},
    }
    points = [point for _, point in data_points(reader, "mollifier.decisions")]
    assert sum(point.value for point in points) == 200
    assert len(points) <= 4
    for point in points:
        assert set(point.attributes) == set(allowed)
        for key, value in point.attributes.items():
            assert value in allowed[key]
    broker.close()


def test_every_instrument_has_a_unit_and_a_description() -> None:
    provider, reader = metrics()
    telemetry = Telemetry(provider)
    telemetry.record_decision(Outcome.MOLLIFY, Reason.PER_ENV_RATE, enrolled=True)
    telemetry.record_buffered(mode="divert")
    telemetry.record_drained(DrainResultKind.ACKED)
    telemetry.record_fail_open(FailOpenStage.TRIP)
    telemetry.record_reclaimed(1)
    telemetry.record_time_in_buffer(12.5)
    telemetry.record_depth(3)

    data = reader.get_metrics_data()
    assert data is not None
    found = [
        metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if scope.scope.name == "dramatiq_mollifier"
    ]
    assert len(found) == 7
    for metric in found:
        assert metric.unit, metric.name
        assert metric.description, metric.name


def test_the_readme_lists_every_reason_and_only_those() -> None:
    # The paragraph "Reasons: `a` (...), `b`, ..." under the telemetry table.
    paragraph = README.read_text(encoding="utf-8").split("\nReasons: ", 1)[1].split("\nLogs", 1)[0]
    documented = re.findall(r"`(\w+)`", paragraph)

    assert sorted(documented) == sorted(reason.value for reason in Reason)
    assert len(documented) == len(set(documented))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_throttled_log_writes_once_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = ThrottledLog(logging.getLogger("test.throttled"), interval_ms=10_000, clock=clock)

    for n in range(5):
        log.throttled_warning("trip", "failed for %r", f"m{n}")
    log.throttled_warning("buffer", "other kind")
    clock.now = 10.0
    log.throttled_warning("trip", "failed for %r", "m9")

    # (only this logger's: another test's middleware may still be folding in the background)
    messages = [record.getMessage() for record in caplog.records if record.name == "test.throttled"]
    assert messages == ["failed for 'm0'", "other kind", "failed for 'm9' (4 similar events not logged)"]
