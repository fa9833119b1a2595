"""The gate: the README's cascade ("How it works") for one message, recording one decision.

Pure policy over its collaborators: the trip evaluator and buffer come in as a
:class:`GateBackend` (a :class:`~dramatiq_mollifier.buffer.MollifierBuffer` in production), the
runtime enrolment as a callable. The middleware applies the returned :class:`Decision` to the
message (marker, diversion); this module never touches a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import dramatiq

from ..breaker import CircuitBreaker
from ..models import (
    DEFAULT_ENV_ID,
    STATE_ADMITTED,
    STATE_DRAINED,
    STATE_OPTION,
    Tenant,
    TripDecision,
    marker_of,
)
from ..settings import MollifierMode, MollifierSettings
from ..telemetry import FailOpenStage, Outcome, Reason, Telemetry, ThrottledLog

if TYPE_CHECKING:
    from .holds import TenantHolds, TenantLimits

__all__ = ["OPT_OUT_OPTION", "Decision", "Gate", "GateBackend", "TenantResolver"]

logger = logging.getLogger(__name__)

#: The actor (or message) option that opts out of the gate when False.
OPT_OUT_OPTION = "mollifier"

#: Envs whose recent trip this process remembers; the memory is emptied when it fills.
MAX_HOT_ENVS = 10_000

#: Derives the tenant of a message; None means "no tenant, never divert".
TenantResolver = Callable[[dramatiq.Message[Any]], Tenant | None]


class GateBackend(Protocol):
    """What the gate needs from the buffer: the trip evaluation and the write."""

    def evaluate_trip(
        self, org_id: str, env_id: str, *, window_ms: int, threshold: int, hold_ms: int
    ) -> TripDecision: ...

    def evaluate_trip_and_accept(
        self,
        message_id: str,
        *,
        org_id: str,
        env_id: str,
        payload: bytes,
        window_ms: int,
        threshold: int,
        hold_ms: int,
    ) -> tuple[TripDecision, bool]: ...

    def accept(self, message_id: str, *, org_id: str, env_id: str, payload: bytes) -> bool: ...


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


_PASS = Outcome.PASS_THROUGH
_BYPASS_DRAINED = Decision(_PASS, Reason.DRAINED)
_BYPASS_ADMITTED = Decision(_PASS, Reason.ADMITTED)
# A delayed send is admitted: when the worker promotes it from the delay queue, it bypasses again.
_BYPASS_DELAYED = Decision(_PASS, Reason.DELAYED, admit=True)
_BYPASS_OPT_OUT = Decision(_PASS, Reason.ACTOR_OPT_OUT)
_BYPASS_NO_TENANT = Decision(_PASS, Reason.NO_TENANT)
_BYPASS_UNINTERCEPTED = Decision(_PASS, Reason.UNINTERCEPTED)
_TENANT_ERROR = Decision(_PASS, Reason.TENANT_ERROR)
# Messages let through undelayed carry no marker: a Dramatiq retry is always delayed, and a copy
# of the message (a fan-out, a re-send) must be gated like any other.
_NOT_ENROLLED = Decision(_PASS, Reason.NOT_ENROLLED)
_SHADOW_LOG = Decision(Outcome.SHADOW_LOG, Reason.PER_ENV_RATE)
_BELOW = {on: Decision(_PASS, Reason.BELOW_THRESHOLD, enrolled=on) for on in (False, True)}
_TRIP_ERROR = {on: Decision(_PASS, Reason.TRIP_ERROR, enrolled=on) for on in (False, True)}
_BREAKER_OPEN = {on: Decision(_PASS, Reason.BREAKER_OPEN, enrolled=on) for on in (False, True)}
_BUFFER_ERROR = Decision(_PASS, Reason.BUFFER_ERROR, enrolled=True)
# A re-send whose id the buffer already holds (queued, draining or dead-lettered) goes to the
# broker: the buffer keeps one entry per id, and swallowing the re-send would lose it.
_DUPLICATE_ID = Decision(_PASS, Reason.DUPLICATE_ID, enrolled=True)
_MOLLIFY = {
    MollifierMode.DIVERT: Decision(Outcome.MOLLIFY, Reason.PER_ENV_RATE, enrolled=True, divert=True),
    MollifierMode.DUAL_WRITE: Decision(Outcome.MOLLIFY, Reason.PER_ENV_RATE, enrolled=True),
}

# Returned by _resolve_tenant when the resolver failed.
_TENANT_FAILED = object()


def _never_enrolled(org_id: str) -> bool:
    return False


class Gate:
    """Decides, for each message, between ``pass_through``, ``shadow_log`` and ``mollify``.

    Parameters:
      settings: The mollifier settings (thresholds, mode, static enrolment).
      backend: The trip evaluator and buffer.
      telemetry: Where the decision and any fail-open event are counted.
      runtime_enrolled: Whether the runtime flag enrols an org (no I/O expected per call).
        Defaults to "never".
      tenant: Derives the tenant of a message. Defaults to the ``org_id``/``env_id`` options.
      clock: Seconds from an arbitrary origin, for the trip hint. Defaults to ``time.monotonic``.
      breaker: Stops the Redis calls while Redis is unreachable or stalled; refused calls fail
        open at once (``fail_open{stage=breaker}``). Defaults to a breaker of the gate's own.
      holds: Pauses and caps (:mod:`.holds`). Defaults to none.
    """

    def __init__(
        self,
        settings: MollifierSettings,
        *,
        backend: GateBackend,
        telemetry: Telemetry,
        runtime_enrolled: Callable[[str], bool] = _never_enrolled,
        tenant: TenantResolver | None = None,
        clock: Callable[[], float] = time.monotonic,
        breaker: CircuitBreaker | None = None,
        holds: TenantHolds | None = None,
    ) -> None:
        self._settings = settings
        self._holds = holds
        self._breaker = breaker if breaker is not None else CircuitBreaker("gate")
        self._backend = backend
        self._telemetry = telemetry
        self._runtime_enrolled = runtime_enrolled
        self._resolver = tenant
        self._clock = clock
        self._mollify = _MOLLIFY[settings.mode]
        self._mode = settings.mode.value
        self._window_ms = settings.trip_window_ms
        self._threshold = settings.trip_threshold
        self._hold_ms = settings.trip_hold_ms
        # How long a trip seen here makes the next evaluation ship the payload (fused script).
        self._hint_s = max(settings.trip_hold_ms, settings.trip_window_ms) / 1000
        # (org, env) -> until when (clock) this process believes the env is tripped.
        self._hot: dict[Tenant, float] = {}
        self._opted_out: set[str] = set()
        self._warnings = ThrottledLog(logger)

    def opt_out(self, actor_name: str) -> None:
        """Never divert messages of ``actor_name`` (an actor declared with ``mollifier=False``)."""
        self._opted_out.add(actor_name)

    def decide(
        self, message: dramatiq.Message[Any], delay: int | None = None, *, intercepted: bool = True
    ) -> Decision:
        """Run the cascade for ``message`` and count the decision (exactly once).

        ``intercepted`` says whether the broker write can be skipped; if not, the message bypasses.
        """
        decision = self._decide(message, delay, intercepted)
        self._telemetry.record_decision(decision.outcome, decision.reason, enrolled=decision.enrolled)
        return decision

    def _decide(self, message: dramatiq.Message[Any], delay: int | None, intercepted: bool) -> Decision:
        options = message.options
        state = marker_of(options, message.message_id) if STATE_OPTION in options else None
        if state == STATE_DRAINED:
            return _BYPASS_DRAINED
        if state == STATE_ADMITTED:
            return _BYPASS_ADMITTED
        if delay is not None:
            return _BYPASS_DELAYED
        opt_in = options.get(OPT_OUT_OPTION)
        if opt_in is False or (opt_in is None and message.actor_name in self._opted_out):
            return _BYPASS_OPT_OUT
        tenant = self._resolve_tenant(message)
        if tenant is None:
            return _BYPASS_NO_TENANT
        if tenant is _TENANT_FAILED:
            return _TENANT_ERROR
        assert isinstance(tenant, Tenant)
        if not intercepted:
            return _BYPASS_UNINTERCEPTED
        holds = self._holds
        limits = holds.limits(tenant) if holds is not None else None
        if holds is not None and limits is not None and limits.paused:
            return holds.accept(message, tenant, limits, _BUFFER_ERROR)
        org_id = tenant.org_id
        enrolled = self._settings.org_enrolled_statically(org_id) or self._runtime_enrolled(org_id)
        if not enrolled and not self._settings.shadow_mode:
            return _NOT_ENROLLED
        if not self._breaker.allow():
            self._telemetry.record_fail_open(FailOpenStage.BREAKER)
            return _BREAKER_OPEN[enrolled]
        if enrolled and self._is_hot(tenant) and limits is None:
            return self._evaluate_and_accept(message, tenant)
        return self._evaluate(message, tenant, enrolled, limits)

    def _resolve_tenant(self, message: dramatiq.Message[Any]) -> Tenant | object | None:
        if self._resolver is None:
            options = message.options
            org_id = options.get("org_id")
            if org_id is None or org_id == "":
                return None
            env_id = options.get("env_id")
            if env_id is None or env_id == "":
                env_id = DEFAULT_ENV_ID
            if type(org_id) is str and type(env_id) is str:
                return Tenant(org_id, env_id)
            if type(org_id) in (str, int) and type(env_id) in (str, int):
                return Tenant(str(org_id), str(env_id))
            self._fail_open(
                FailOpenStage.TENANT,
                "Message %r has an org_id or env_id that is neither str nor int (%r, %r); not gated.",
                message.message_id,
                org_id,
                env_id,
            )
            return _TENANT_FAILED
        try:
            tenant = self._resolver(message)
        except Exception as exc:
            self._fail_open(
                FailOpenStage.TENANT,
                "The tenant resolver failed for message %r; not gated.",
                message.message_id,
                exc=exc,
            )
            return _TENANT_FAILED
        if tenant is None:
            return None
        if not isinstance(tenant, Tenant) or not isinstance(tenant.org_id, str) or not tenant.org_id:
            self._fail_open(
                FailOpenStage.TENANT,
                "The tenant resolver returned %r for message %r, not a Tenant; not gated.",
                tenant,
                message.message_id,
            )
            return _TENANT_FAILED
        return tenant

    def _evaluate(
        self,
        message: dramatiq.Message[Any],
        tenant: Tenant,
        enrolled: bool,
        limits: TenantLimits | None = None,
    ) -> Decision:
        """One round trip; a tripped enrolled env pays a second one for the write (first time only)."""
        try:
            trip = self._backend.evaluate_trip(
                tenant.org_id,
                tenant.env_id,
                window_ms=self._window_ms,
                threshold=self._threshold,
                hold_ms=self._hold_ms,
            )
            tripped = bool(trip.tripped)
        except Exception as exc:
            self._breaker.record(exc)
            self._trip_failed(message, tenant, exc)
            return _TRIP_ERROR[enrolled]
        self._breaker.record_success()
        if not tripped:
            return _BELOW[enrolled]
        if not enrolled:
            logger.info(
                "mollifier.would_mollify message_id=%r org_id=%r env_id=%r count=%d",
                message.message_id,
                tenant.org_id,
                tenant.env_id,
                trip.count,
            )
            return _SHADOW_LOG
        self._heat(tenant)
        if self._holds is not None and limits is not None:
            return self._holds.accept(message, tenant, limits, _BUFFER_ERROR)
        if not self._breaker.allow():
            self._telemetry.record_fail_open(FailOpenStage.BREAKER)
            return _BREAKER_OPEN[True]
        try:
            accepted = self._backend.accept(
                message.message_id, org_id=tenant.org_id, env_id=tenant.env_id, payload=message.encode()
            )
        except Exception as exc:
            self._breaker.record(exc)
            self._fail_open(
                FailOpenStage.BUFFER_WRITE,
                "Could not buffer message %r of org %r env %r; it goes to the broker.",
                message.message_id,
                tenant.org_id,
                tenant.env_id,
                exc=exc,
            )
            return _BUFFER_ERROR
        self._breaker.record_success()
        return self._mollified(message, tenant, accepted)

    def _evaluate_and_accept(self, message: dramatiq.Message[Any], tenant: Tenant) -> Decision:
        """The env tripped recently: evaluate and write in one script, one round trip."""
        try:
            trip, accepted = self._backend.evaluate_trip_and_accept(
                message.message_id,
                org_id=tenant.org_id,
                env_id=tenant.env_id,
                payload=message.encode(),
                window_ms=self._window_ms,
                threshold=self._threshold,
                hold_ms=self._hold_ms,
            )
            tripped = bool(trip.tripped)
        except Exception as exc:
            # A lost reply may hide a stored entry: then the broker gets a copy too (same message
            # id, so the duplicate is recognisable). Dropping the message would be worse.
            self._breaker.record(exc)
            self._trip_failed(message, tenant, exc)
            return _TRIP_ERROR[True]
        self._breaker.record_success()
        if not tripped:
            self._hot.pop(tenant, None)
            return _BELOW[True]
        self._heat(tenant)
        return self._mollified(message, tenant, bool(accepted))

    def _mollified(self, message: dramatiq.Message[Any], tenant: Tenant, accepted: bool) -> Decision:
        if accepted:
            self._telemetry.record_buffered(mode=self._mode)
            logger.info(
                "mollifier.buffered message_id=%r org_id=%r env_id=%r mode=%s",
                message.message_id,
                tenant.org_id,
                tenant.env_id,
                self._mode,
            )
            self._warnings.throttled_warning(
                "mollify",
                "mollifier: org %r env %r sent more than trip_threshold=%d messages in "
                "trip_window_ms=%d, so its sends are buffered and drained at the workers' pace. A "
                "producer that legitimately sends this much needs a higher MOLLIFIER_TRIP_THRESHOLD "
                "(or its actor declared with mollifier=False).",
                tenant.org_id,
                tenant.env_id,
                self._threshold,
                self._window_ms,
            )
            return self._mollify
        self._warnings.throttled_warning(
            "duplicate_id",
            "mollifier: message %r of org %r env %r is already in the buffer (queued, draining or "
            "dead-lettered); this re-send goes to the broker instead.",
            message.message_id,
            tenant.org_id,
            tenant.env_id,
        )
        return _DUPLICATE_ID

    def _is_hot(self, tenant: Tenant) -> bool:
        until = self._hot.get(tenant)
        return until is not None and until > self._clock()

    def _heat(self, tenant: Tenant) -> None:
        if len(self._hot) >= MAX_HOT_ENVS and tenant not in self._hot:
            self._hot.clear()
        self._hot[tenant] = self._clock() + self._hint_s

    def _trip_failed(self, message: dramatiq.Message[Any], tenant: Tenant, exc: Exception) -> None:
        self._fail_open(
            FailOpenStage.TRIP,
            "Trip evaluation failed for message %r of org %r env %r; it goes to the broker.",
            message.message_id,
            tenant.org_id,
            tenant.env_id,
            exc=exc,
        )

    def _fail_open(self, stage: FailOpenStage, msg: str, *args: Any, exc: Exception | None = None) -> None:
        self._telemetry.record_fail_open(stage)
        if exc is not None:
            msg += " %s: %s"
            args = (*args, type(exc).__name__, exc)
        self._warnings.throttled_warning(stage.value, "mollifier fail-open (%s): " + msg, stage.value, *args)
