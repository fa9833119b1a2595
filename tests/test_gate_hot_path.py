"""The gate's hot path: round trips per send, the trip hint, modes and fail-open (stub evaluator)."""

from __future__ import annotations

import logging

import pytest

from dramatiq_mollifier import BufferUnavailableError
from dramatiq_mollifier.gate import exact_trip

from .mollifier_helpers import decisions, fail_opens, total
from .test_gate import StubBackend, make_gate, message


def test_a_not_tripped_send_costs_one_evaluation_without_the_payload() -> None:
    backend = StubBackend(tripped=False)
    gate, _, _ = make_gate(backend)

    for _ in range(5):
        assert gate.decide(message(org_id="acme")).reason.value == "below_threshold"

    assert backend.calls == ["evaluate_trip"] * 5


def test_only_the_first_diverted_send_of_a_hold_period_pays_two_round_trips() -> None:
    backend = StubBackend(tripped=True)
    gate, reader, _ = make_gate(backend, trip_hold_ms=500)

    for _ in range(4):
        assert gate.decide(message(org_id="acme", env_id="prod")).divert

    assert backend.calls == ["evaluate_trip", "accept"] + ["evaluate_trip_and_accept"] * 3
    assert len(backend.buffered) == 4
    assert total(reader, "mollifier.buffered") == 4
    assert decisions(reader) == {("mollify", "per_env_rate", True): 4}


def test_the_trip_hint_is_per_env_and_expires_after_the_hold() -> None:
    backend = StubBackend(tripped=True)
    gate, _, clock = make_gate(backend, trip_hold_ms=500, trip_window_ms=200)
    gate.decide(message(org_id="acme", env_id="prod"))
    backend.calls.clear()

    gate.decide(message(org_id="acme", env_id="staging"))  # another env: no hint
    clock.now += 0.4
    gate.decide(message(org_id="acme", env_id="prod"))  # within the hold: fused
    clock.now += 0.4
    gate.decide(message(org_id="acme", env_id="prod"))  # hint refreshed by the last trip: fused
    clock.now += 0.6
    gate.decide(message(org_id="acme", env_id="prod"))  # expired: evaluate, then accept

    assert backend.calls == [
        "evaluate_trip",
        "accept",
        "evaluate_trip_and_accept",
        "evaluate_trip_and_accept",
        "evaluate_trip",
        "accept",
    ]


def test_a_fused_call_that_finds_the_env_cooled_passes_through_and_drops_the_hint() -> None:
    backend = StubBackend(tripped=True)
    gate, _reader, _ = make_gate(backend)
    gate.decide(message(org_id="acme"))
    backend.tripped = False

    first = gate.decide(message(org_id="acme"))
    second = gate.decide(message(org_id="acme"))

    assert (first.reason.value, first.admit, first.divert) == ("below_threshold", False, False)
    assert second.reason.value == "below_threshold"
    assert backend.calls == ["evaluate_trip", "accept", "evaluate_trip_and_accept", "evaluate_trip"]
    assert len(backend.buffered) == 1


def test_the_trip_hint_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exact_trip, "MAX_HOT_ENVS", 3)
    gate, _, _ = make_gate(StubBackend(tripped=True))

    for env in range(10):
        gate.decide(message(org_id="acme", env_id=f"env-{env}"))
        assert len(gate.trip._hot) <= 3  # type: ignore[union-attr]


def test_shadow_mode_never_uses_the_fused_write_even_for_a_hot_env() -> None:
    backend = StubBackend(tripped=True)
    gate, _, _ = make_gate(backend, enabled_orgs=set(), shadow_mode=True)

    for _ in range(3):
        gate.decide(message(org_id="acme"))

    assert backend.calls == ["evaluate_trip"] * 3
    assert backend.buffered == {}


def test_an_id_already_buffered_is_not_written_twice_and_the_re_send_goes_to_the_broker() -> None:
    backend = StubBackend(tripped=True)
    gate, reader, _ = make_gate(backend)
    again = message(org_id="acme")

    assert gate.decide(again).divert
    assert not gate.decide(again).divert  # the buffer keeps one entry per id: not swallowed

    assert len(backend.buffered) == 1
    assert total(reader, "mollifier.buffered") == 1
    assert decisions(reader) == {
        ("mollify", "per_env_rate", True): 1,
        ("pass_through", "duplicate_id", True): 1,
    }


def test_dual_write_buffers_a_copy_and_lets_the_message_reach_the_broker() -> None:
    backend = StubBackend(tripped=True)
    gate, reader, _ = make_gate(backend, mode="dual_write")
    sent = message(org_id="acme")

    decision = gate.decide(sent)

    assert (decision.outcome.value, decision.divert, decision.admit) == ("mollify", False, False)
    assert backend.buffered == {sent.message_id: sent.encode()}
    assert total(reader, "mollifier.buffered") == 1


def test_the_buffered_payload_is_the_encoded_message(caplog: pytest.LogCaptureFixture) -> None:
    backend = StubBackend(tripped=True)
    gate, _, _ = make_gate(backend)
    caplog.set_level(logging.INFO, logger="dramatiq_mollifier.gate.cascade")
    sent = message(org_id="acme", env_id="prod")

    gate.decide(sent)

    assert backend.buffered[sent.message_id] == sent.encode()
    assert f"mollifier.buffered message_id={sent.message_id!r} org_id='acme' env_id='prod'" in caplog.text


@pytest.mark.parametrize("hot", [False, True], ids=["cold", "hot"])
def test_a_trip_error_fails_open_to_the_broker(hot: bool, caplog: pytest.LogCaptureFixture) -> None:
    backend = StubBackend(tripped=True)
    gate, reader, _ = make_gate(backend)
    if hot:
        gate.decide(message(org_id="acme"))
    backend.trip_error = BufferUnavailableError("Redis evaluate_trip failed: ConnectionError")

    decision = gate.decide(message(org_id="acme"))

    assert (decision.outcome.value, decision.reason.value) == ("pass_through", "fail_open_trip")
    assert (decision.divert, decision.admit, decision.enrolled) == (False, False, True)
    assert fail_opens(reader) == {("trip",): 1}
    assert "mollifier fail-open (trip)" in caplog.text


def test_garbage_from_the_evaluator_fails_open() -> None:
    backend = StubBackend()
    gate, reader, _ = make_gate(backend)
    backend.evaluate_trip = lambda *a, **kw: b"OK"  # type: ignore[assignment,method-assign]

    assert gate.decide(message(org_id="acme")).reason.value == "fail_open_trip"
    assert fail_opens(reader) == {("trip",): 1}


def test_a_buffer_write_error_sends_the_message_to_the_broker_after_all() -> None:
    backend = StubBackend(tripped=True)
    gate, reader, _ = make_gate(backend)
    backend.accept_error = BufferUnavailableError("Redis accept failed: TimeoutError")

    decision = gate.decide(message(org_id="acme"))

    assert (decision.outcome.value, decision.reason.value) == ("pass_through", "fail_open_buffer")
    assert (decision.divert, decision.admit) == (False, False)
    assert fail_opens(reader) == {("buffer_write",): 1}
    assert decisions(reader) == {("pass_through", "fail_open_buffer", True): 1}
    assert total(reader, "mollifier.buffered") == 0


def test_fail_open_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    backend = StubBackend()
    gate, reader, _ = make_gate(backend)
    backend.trip_error = BufferUnavailableError("down")

    for _ in range(100):
        gate.decide(message(org_id="acme"))

    assert caplog.text.count("mollifier fail-open (trip)") == 1
    assert fail_opens(reader) == {("trip",): 100}


def test_an_unhashable_tenant_id_fails_open_with_its_reason() -> None:
    # The gate reads the default resolver's cache by the option values before anything else
    backend = StubBackend(tripped=False)
    gate, reader, _ = make_gate(backend)
    gate.decide(message(org_id="acme", env_id="prod"))  # a cached pair

    decision = gate.decide(message(org_id=["acme"], env_id="prod"))
    decision_with_env = gate.decide(message(org_id="acme", env_id={"prod": 1}))

    assert (decision.reason.value, decision_with_env.reason.value) == ("fail_open_tenant",) * 2
    assert not decision.divert and not decision_with_env.divert
    assert fail_opens(reader) == {("tenant",): 2}
