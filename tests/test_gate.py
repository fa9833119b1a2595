"""The gate cascade as pure policy: a stub evaluator, the real Telemetry read through the SDK."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from dramatiq_mollifier import Mollifier, MollifierSettings, Tenant, TripDecision
from dramatiq_mollifier.gate.cascade import Decision, Gate
from dramatiq_mollifier.models import STATE_ADMITTED, STATE_DRAINED, STATE_OPTION, marker
from dramatiq_mollifier.telemetry import Telemetry

from .mollifier_helpers import decisions, fail_opens, metrics


class StubBackend:
    """Records every call; trips when told to; stores accepted payloads by message id."""

    def __init__(self, *, tripped: bool = False) -> None:
        self.tripped = tripped
        self.calls: list[str] = []
        self.buffered: dict[str, bytes] = {}
        self.trip_error: Exception | None = None
        self.accept_error: Exception | None = None

    def evaluate_trip(
        self, org_id: str, env_id: str, *, window_ms: int, threshold: int, hold_ms: int
    ) -> TripDecision:
        self.calls.append("evaluate_trip")
        if self.trip_error:
            raise self.trip_error
        return TripDecision(self.tripped, 7)

    def evaluate_trip_and_accept(
        self, message_id: str, *, org_id: str, env_id: str, payload: bytes, **trip: int
    ) -> tuple[TripDecision, bool]:
        self.calls.append("evaluate_trip_and_accept")
        if self.trip_error:
            raise self.trip_error
        if not self.tripped:
            return TripDecision(False, 1), False
        return TripDecision(True, 7), self._store(message_id, payload)

    def accept(self, message_id: str, *, org_id: str, env_id: str, payload: bytes) -> bool:
        self.calls.append("accept")
        if self.accept_error:
            raise self.accept_error
        return self._store(message_id, payload)

    def _store(self, message_id: str, payload: bytes) -> bool:
        if message_id in self.buffered:
            return False
        self.buffered[message_id] = payload
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def message(**options: Any) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name="default", actor_name="ingest", args=(1,), kwargs={}, options=options)


def marked(state: str, **options: Any) -> dramatiq.Message[Any]:
    """A message carrying ``state`` set for its own id (as the drainer and the middleware set it)."""
    sent = message(**options)
    sent.options.update(marker(state, sent.message_id))
    return sent


def make_gate(
    backend: StubBackend, *, runtime_enrolled: Callable[[str], bool] = lambda org: False, **settings: Any
) -> tuple[Gate, InMemoryMetricReader, FakeClock]:
    provider, reader = metrics()
    clock = FakeClock()
    # The stub counts Redis calls per send: the exact evaluator's (tests/test_local_trip.py has
    # the local one's).
    values: dict[str, Any] = {
        "enabled": True,
        "enabled_orgs": {"acme"},
        "trip_evaluator": "exact",
        **settings,
    }
    gate = Gate(
        MollifierSettings(**values),
        backend=backend,
        telemetry=Telemetry(provider),
        runtime_enrolled=runtime_enrolled,
        clock=clock,
    )
    return gate, reader, clock


# The truth table: enabled x shadow x enrolled x tripped -------------------------------------
# Expected: (evaluator calls, decision or None, reached the broker)
EXPECTED: dict[tuple[bool, bool, bool], tuple[list[str], tuple[str, str, bool] | None, bool]] = {
    # (shadow, enrolled, tripped)
    (False, False, False): ([], ("pass_through", "not_enrolled", False), True),
    (False, False, True): ([], ("pass_through", "not_enrolled", False), True),
    (False, True, False): (["evaluate_trip"], ("pass_through", "below_threshold", True), True),
    (False, True, True): (["evaluate_trip", "accept"], ("mollify", "per_env_rate", True), False),
    (True, False, False): (["evaluate_trip"], ("pass_through", "below_threshold", False), True),
    (True, False, True): (["evaluate_trip"], ("shadow_log", "per_env_rate", False), True),
    (True, True, False): (["evaluate_trip"], ("pass_through", "below_threshold", True), True),
    (True, True, True): (["evaluate_trip", "accept"], ("mollify", "per_env_rate", True), False),
}


@pytest.mark.parametrize(
    ("enabled", "shadow", "enrolled", "tripped"), list(itertools.product([False, True], repeat=4))
)
def test_truth_table_calls_the_evaluator_only_where_it_should_and_records_one_decision(
    enabled: bool, shadow: bool, enrolled: bool, tripped: bool
) -> None:
    # Given a StubBroker with the middleware, whose gate runs over a stub evaluator
    provider, reader = metrics()
    settings = MollifierSettings(
        enabled=enabled,
        shadow_mode=shadow,
        enabled_orgs={"acme"} if enrolled else set(),
        trip_evaluator="exact",
    )
    # The client points at a closed port: nothing here may reach it.
    mollifier = Mollifier(settings, client=redis.Redis(port=1), meter_provider=provider)
    backend = StubBackend(tripped=tripped)
    mollifier.gate = Gate(settings, backend=backend, telemetry=mollifier.telemetry)
    broker = StubBroker()
    broker.add_middleware(mollifier)

    @dramatiq.actor(broker=broker)
    def ingest(n: int) -> None: ...

    # When one message is sent
    sent = ingest.send_with_options(args=(1,), org_id="acme", env_id="prod")

    # Then
    calls, decision, on_broker = EXPECTED[(shadow, enrolled, tripped)]
    assert isinstance(sent, dramatiq.Message)
    if not enabled:
        assert backend.calls == []
        assert decisions(reader) == {}
        assert broker.queues["default"].qsize() == 1
        assert STATE_OPTION not in sent.options
        return
    assert backend.calls == calls
    assert decisions(reader) == {decision: 1}
    assert broker.queues["default"].qsize() == (1 if on_broker else 0)
    assert (sent.message_id in backend.buffered) is (not on_broker)
    # The gate never marks the message the caller holds; a diverted one says it was mollified
    assert STATE_OPTION not in sent.options
    assert sent.options.get("mollified", False) is (not on_broker)


# Bypasses: decided without touching the evaluator ---------------------------------------------
@pytest.mark.parametrize(
    ("options", "delay", "reason", "admit"),
    [
        ({"state": STATE_DRAINED, "org_id": "acme"}, None, "bypass_drained", False),
        ({"state": STATE_ADMITTED, "org_id": "acme"}, None, "bypass_admitted", False),
        ({"org_id": "acme"}, 1000, "bypass_delayed", True),
        ({"org_id": "acme"}, 0, "bypass_delayed", True),
        ({"org_id": "acme", "mollifier": False}, None, "bypass_actor_opt_out", False),
        ({}, None, "bypass_no_tenant", False),
        ({"org_id": ""}, None, "bypass_no_tenant", False),
        ({"env_id": "prod"}, None, "bypass_no_tenant", False),
    ],
)
def test_bypasses_pass_through_without_evaluating(
    options: dict[str, Any], delay: int | None, reason: str, admit: bool
) -> None:
    backend = StubBackend(tripped=True)
    gate, reader, _ = make_gate(backend)
    state = options.pop("state", None)

    decision = gate.decide(message(**options) if state is None else marked(state, **options), delay)

    assert backend.calls == []
    assert (decision.outcome.value, decision.reason.value, decision.admit) == ("pass_through", reason, admit)
    assert not decision.divert
    assert decisions(reader) == {("pass_through", reason, False): 1}


def test_an_actor_opted_out_is_never_diverted_but_a_message_option_may_opt_it_back_in() -> None:
    backend = StubBackend(tripped=True)
    gate, _, _ = make_gate(backend)
    gate.opt_out("ingest")

    assert gate.decide(message(org_id="acme")).reason.value == "bypass_actor_opt_out"
    assert gate.decide(message(org_id="acme", mollifier=True)).outcome.value == "mollify"


def test_a_message_that_cannot_be_intercepted_bypasses_the_gate() -> None:
    backend = StubBackend(tripped=True)
    gate, _reader, _ = make_gate(backend)

    decision = gate.decide(message(org_id="acme"), intercepted=False)

    assert (decision.reason.value, decision.divert) == ("bypass_unintercepted", False)
    assert backend.calls == []


# Tenants ---------------------------------------------------------------------------------------
def test_tenant_comes_from_options_and_env_defaults_to_default() -> None:
    seen: list[str] = []
    backend = StubBackend()
    gate, _, _ = make_gate(backend, enabled_orgs={"*"})
    backend.evaluate_trip = lambda org, env, **kw: seen.append(f"{org}/{env}") or TripDecision(False, 1)  # type: ignore[method-assign]

    gate.decide(message(org_id="acme"))
    gate.decide(message(org_id="acme", env_id="prod"))
    gate.decide(message(org_id=42, env_id=7))

    assert seen == ["acme/default", "acme/prod", "42/7"]


def test_a_tenant_resolver_replaces_the_options() -> None:
    backend = StubBackend(tripped=True)
    gate, _, _ = make_gate(backend)
    gate._resolver = lambda m: Tenant("acme", "from-resolver") if m.args == (1,) else None

    assert gate.decide(message()).outcome.value == "mollify"
    other = dramatiq.Message(queue_name="q", actor_name="a", args=(2,), kwargs={}, options={"org_id": "acme"})
    assert gate.decide(other).reason.value == "bypass_no_tenant"


@pytest.mark.parametrize(
    "resolver",
    [lambda m: 1 / 0, lambda m: ("acme", "prod"), lambda m: Tenant("", "prod")],
    ids=["raises", "returns-a-plain-tuple", "returns-an-empty-org"],
)
def test_a_failing_tenant_resolver_fails_open(resolver: Any, caplog: pytest.LogCaptureFixture) -> None:
    backend = StubBackend(tripped=True)
    gate, reader, _ = make_gate(backend)
    gate._resolver = resolver

    decision = gate.decide(message(org_id="acme"))

    assert (decision.outcome.value, decision.reason.value) == ("pass_through", "fail_open_tenant")
    assert backend.calls == []
    assert fail_opens(reader) == {("tenant",): 1}
    assert "fail-open (tenant)" in caplog.text


def test_an_org_id_of_another_type_fails_open() -> None:
    gate, reader, _ = make_gate(StubBackend(tripped=True))

    assert gate.decide(message(org_id=["acme"])).reason.value == "fail_open_tenant"
    assert fail_opens(reader) == {("tenant",): 1}


# Enrolment -------------------------------------------------------------------------------------
def test_runtime_enrolment_is_asked_only_when_the_static_setting_does_not_enrol() -> None:
    asked: list[str] = []

    def runtime(org: str) -> bool:
        asked.append(org)
        return org == "globex"

    backend = StubBackend(tripped=True)
    gate, _reader, _ = make_gate(backend, runtime_enrolled=runtime)

    assert gate.decide(message(org_id="acme")).outcome.value == "mollify"
    assert gate.decide(message(org_id="globex")).outcome.value == "mollify"
    assert gate.decide(message(org_id="initech")).reason.value == "not_enrolled"
    assert asked == ["globex", "initech"]


def test_star_enrols_every_org() -> None:
    gate, _, _ = make_gate(StubBackend(tripped=True), enabled_orgs={"*"})

    assert gate.decide(message(org_id="anyone")).outcome.value == "mollify"


# Shadow ----------------------------------------------------------------------------------------
def test_shadow_mode_logs_would_mollify_and_never_buffers(caplog: pytest.LogCaptureFixture) -> None:
    backend = StubBackend(tripped=True)
    gate, _, _ = make_gate(backend, enabled_orgs=set(), shadow_mode=True)
    caplog.set_level(logging.INFO, logger="dramatiq_mollifier.gate.cascade")

    for _ in range(3):
        decision = gate.decide(message(org_id="acme", env_id="prod"))
        assert (decision.outcome.value, decision.divert, decision.admit) == ("shadow_log", False, False)

    assert backend.calls == ["evaluate_trip"] * 3
    assert backend.buffered == {}
    assert caplog.text.count("mollifier.would_mollify") == 3
    assert "org_id='acme' env_id='prod'" in caplog.text


def test_decision_is_a_frozen_value() -> None:
    decision = make_gate(StubBackend())[0].decide(message())
    assert isinstance(decision, Decision)
    with pytest.raises(AttributeError):
        decision.divert = True  # type: ignore[misc]


# Markers describe one enqueue ---------------------------------------------------------------
@pytest.mark.parametrize("state", [STATE_DRAINED, STATE_ADMITTED])
def test_a_copy_of_a_marked_message_under_a_new_id_is_gated(state: str) -> None:
    # Given a message marked by the drainer or the middleware, and a fan-out copy of it
    backend = StubBackend(tripped=True)
    gate, _, _ = make_gate(backend)
    original = marked(state, org_id="acme")
    copy = original.copy(message_id="fan-out-1")

    # When both reach the gate
    first = gate.decide(original)
    second = gate.decide(copy)

    # Then the marked enqueue bypasses, the copy is evaluated and diverted like any message
    assert first.reason.value == f"bypass_{state}"
    assert (second.outcome.value, second.divert) == ("mollify", True)
    assert backend.buffered.keys() == {"fan-out-1"}


def test_a_re_send_whose_id_is_already_buffered_goes_to_the_broker_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = StubBackend(tripped=True)
    gate, reader, _ = make_gate(backend)
    sent = message(org_id="acme")

    first = gate.decide(sent)
    again = gate.decide(sent.copy())

    assert first.divert
    assert (again.outcome.value, again.reason.value, again.divert) == ("pass_through", "duplicate_id", False)
    assert decisions(reader)[("pass_through", "duplicate_id", True)] == 1
    assert "already in the buffer" in caplog.text
