"""What the gate decides for one message: :class:`Decision`, shared by the cascade and the holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..telemetry import Outcome, Reason, decision_attributes

__all__ = ["Decision"]


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
