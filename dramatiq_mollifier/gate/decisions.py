"""What the gate decides for one message: :class:`Decision`, shared by the cascade and the holds,
and the fixed decisions the cascade hands out (built once: decisions are constants)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..settings import MollifierMode
from ..telemetry import Outcome, Reason, decision_attributes

__all__ = [
    "BELOW",
    "BREAKER_OPEN",
    "BUFFER_ERROR",
    "BYPASS_ADMITTED",
    "BYPASS_DELAYED",
    "BYPASS_DRAINED",
    "BYPASS_NO_TENANT",
    "BYPASS_OPT_OUT",
    "BYPASS_UNINTERCEPTED",
    "DUPLICATE_ID",
    "MOLLIFY",
    "NOT_ENROLLED",
    "SHADOW_GLOBAL",
    "SHADOW_LOG",
    "TENANT_ERROR",
    "TRIP_ERROR",
    "Decision",
]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the gate decided for one message, and what the middleware must do about it."""

    outcome: Outcome
    reason: Reason
    #: Whether the org was enrolled (False for bypasses, which are decided before enrolment).
    enrolled: bool = False
    #: The buffer holds the message: skip the broker write (``divert`` mode only).
    divert: bool = False
    #: Mark the message admitted (bound to its id), so its delay-queue promotion bypasses the gate.
    #: Only delayed sends: the message a broker delays is always its own copy, never the caller's.
    admit: bool = False
    #: What ``mollifier.decisions`` counts it under (computed once: decisions are constants).
    attributes: Mapping[str, str | bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        attributes = decision_attributes(self.outcome, self.reason, enrolled=self.enrolled)
        object.__setattr__(self, "attributes", attributes)


_PASS = Outcome.PASS_THROUGH
BYPASS_DRAINED = Decision(_PASS, Reason.DRAINED)
BYPASS_ADMITTED = Decision(_PASS, Reason.ADMITTED)
# A delayed send is admitted: when the worker promotes it from the delay queue, it bypasses again.
BYPASS_DELAYED = Decision(_PASS, Reason.DELAYED, admit=True)
BYPASS_OPT_OUT = Decision(_PASS, Reason.ACTOR_OPT_OUT)
BYPASS_NO_TENANT = Decision(_PASS, Reason.NO_TENANT)
BYPASS_UNINTERCEPTED = Decision(_PASS, Reason.UNINTERCEPTED)
TENANT_ERROR = Decision(_PASS, Reason.TENANT_ERROR)
# Messages let through undelayed carry no marker: a Dramatiq retry is always delayed, and a copy
# of the message (a fan-out, a re-send) must be gated like any other.
NOT_ENROLLED = Decision(_PASS, Reason.NOT_ENROLLED)
SHADOW_LOG = Decision(Outcome.SHADOW_LOG, Reason.PER_ENV_RATE)
BELOW = {on: Decision(_PASS, Reason.BELOW_THRESHOLD, enrolled=on) for on in (False, True)}
TRIP_ERROR = {on: Decision(_PASS, Reason.TRIP_ERROR, enrolled=on) for on in (False, True)}
BREAKER_OPEN = {on: Decision(_PASS, Reason.BREAKER_OPEN, enrolled=on) for on in (False, True)}
BUFFER_ERROR = Decision(_PASS, Reason.BUFFER_ERROR, enrolled=True)
# A re-send whose id the buffer already holds (queued, draining or dead-lettered) goes to the
# broker: the buffer keeps one entry per id, and swallowing the re-send would lose it.
DUPLICATE_ID = Decision(_PASS, Reason.DUPLICATE_ID, enrolled=True)
SHADOW_GLOBAL = Decision(Outcome.SHADOW_LOG, Reason.GLOBAL_RATE)
MOLLIFY = {
    (mode, reason): Decision(Outcome.MOLLIFY, reason, enrolled=True, divert=mode is MollifierMode.DIVERT)
    for mode in MollifierMode
    for reason in (Reason.PER_ENV_RATE, Reason.GLOBAL_RATE)
}
