"""The gate: the README's cascade ("How it works") for one message, recording one decision.

Pure policy over its collaborators: the trip evaluator and buffer come in as a
:class:`GateBackend` (a :class:`~dramatiq_mollifier.buffer.MollifierBuffer` in production), the
runtime enrolment as a callable. The middleware applies the returned :class:`Decision` to the
message (marker, diversion); this module never touches a broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import dramatiq

from ..breaker import CircuitBreaker
from ..models import STATE_ADMITTED, STATE_DRAINED, STATE_OPTION, Tenant, TripDecision, marker_of
from ..settings import ALL_ORGS, MollifierSettings, TripEvaluator
from ..telemetry import FailOpenStage, Reason, Telemetry
from .decisions import (
    BELOW,
    BREAKER_OPEN,
    BUFFER_ERROR,
    BYPASS_ADMITTED,
    BYPASS_DELAYED,
    BYPASS_DRAINED,
    BYPASS_NO_TENANT,
    BYPASS_OPT_OUT,
    BYPASS_UNINTERCEPTED,
    DUPLICATE_ID,
    MOLLIFY,
    NOT_ENROLLED,
    SHADOW_GLOBAL,
    SHADOW_LOG,
    TENANT_ERROR,
    TRIP_ERROR,
    Decision,
)
from .exact_trip import ExactTrip, TripBackend
from .holds import FusedAcceptBackend
from .local_trip import FoldBackend, LocalTrip, Verdict
from .notices import GateNotices
from .tenants import INVALID, OptionTenants, checked

if TYPE_CHECKING:
    from .holds import TenantHolds, TenantLimits

__all__ = ["OPT_OUT_OPTION", "Decision", "Gate", "GateBackend", "TenantResolver"]

#: The actor (or message) option that opts out of the gate when False.
OPT_OUT_OPTION = "mollifier"

#: Derives the tenant of a message; None means "no tenant, never divert".
TenantResolver = Callable[[dramatiq.Message[Any]], Tenant | None]

_T = TypeVar("_T")


class GateBackend(TripBackend, FoldBackend, FusedAcceptBackend, Protocol):
    """What the gate needs from the buffer: the trip evaluation, the fold and the write."""

    def accept(self, message_id: str, *, org_id: str, env_id: str, payload: bytes) -> bool: ...


# Module constants: reading an Enum member off its class costs a descriptor call per send.
_V_BELOW, _V_TRIPPED = Verdict.BELOW, Verdict.TRIPPED
_V_GLOBAL, _V_DIVERTING = Verdict.GLOBAL, Verdict.DIVERTING

# Returned by _resolve_tenant when the resolver failed, and by _call when the call failed.
_TENANT_FAILED = object()
_FAILED: Any = object()


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
      clock: Seconds from an arbitrary origin, for the trip evaluator. Defaults to ``time.monotonic``.
      breaker: Stops the Redis calls while Redis is unreachable or stalled; refused calls fail
        open at once (``fail_open{stage=breaker}``). Defaults to a breaker of the gate's own.
      holds: Pauses and caps (:mod:`.holds`). Defaults to none.
      layout_confirmed: Whether the key layout is known to match the fleet's, asked before any
        Redis call; no: fail open (``fail_open{stage=layout}``). Defaults to "always".
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
        layout_confirmed: Callable[[], bool] = lambda: True,
    ) -> None:
        self._settings = settings
        self._layout_confirmed = layout_confirmed
        self._holds = holds
        self._breaker = breaker if breaker is not None else CircuitBreaker("gate")
        self._backend = backend
        self._telemetry = telemetry
        self._runtime_enrolled = runtime_enrolled
        self._resolver = tenant
        self._option_tenants = OptionTenants()
        self._tenant_cache = self._option_tenants.cache
        self._count_decision = telemetry.decisions.add
        self._shadow_mode = settings.shadow_mode
        # Static enrolment, read per send: "every org" or a set of orgs.
        self._enrols_all = ALL_ORGS in settings.enabled_orgs
        self._enrolled_orgs = frozenset(settings.enabled_orgs)
        self._mode_setting = settings.mode
        self._mode = settings.mode.value
        self._window_ms = settings.trip_window_ms
        self._threshold = settings.trip_threshold
        self._hold_ms = settings.trip_hold_ms
        self._opted_out: set[str] = set()
        self._notices = GateNotices(settings)
        trip = {"window_ms": self._window_ms, "threshold": self._threshold, "hold_ms": self._hold_ms}
        self._trip: LocalTrip | ExactTrip
        if settings.trip_evaluator is TripEvaluator.LOCAL:
            self._trip = LocalTrip(
                backend=backend,
                fold_interval_ms=settings.trip_fold_interval_ms,
                global_threshold=settings.trip_global_threshold,
                breaker=self._breaker,
                on_error=self._fold_failed,
                clock=clock,
                **trip,
            )
        else:
            self._trip = ExactTrip(backend=backend, clock=clock, **trip)
        self._count = self._trip.count

    @property
    def trip(self) -> LocalTrip | ExactTrip:
        """The trip evaluator's per-process state (``trip_evaluator``)."""
        return self._trip

    def opt_out(self, actor_name: str) -> None:
        """Never divert messages of ``actor_name`` (an actor declared with ``mollifier=False``)."""
        self._opted_out.add(actor_name)

    def decide(
        self, message: dramatiq.Message[Any], delay: int | None = None, *, intercepted: bool = True
    ) -> Decision:
        """Run the cascade for ``message`` and count the decision (exactly once). ``intercepted``
        says whether the broker write can be skipped; if not, the message bypasses."""
        decision = self._decide(message, delay, intercepted)
        self._count_decision(1, decision.attributes)
        return decision

    def _decide(self, message: dramatiq.Message[Any], delay: int | None, intercepted: bool) -> Decision:
        options = message.options
        state = marker_of(options, message.message_id) if STATE_OPTION in options else None
        if state == STATE_DRAINED:
            # A retry of a drained message is delayed: admitted, so a pause holds it when due.
            return BYPASS_DRAINED if delay is None else BYPASS_DELAYED
        if state == STATE_ADMITTED:
            # Due now, promoted from the delay queue (a retry, a delayed send): it passes, unless
            # its tenant is paused.
            if self._holds is None or not intercepted:
                return BYPASS_ADMITTED
            return self._holds.held_when_due(message, self._resolve_tenant, BUFFER_ERROR) or BYPASS_ADMITTED
        if delay is not None:
            return BYPASS_DELAYED
        opt_in = options.get(OPT_OUT_OPTION)
        if opt_in is False or (opt_in is None and self._opted_out and message.actor_name in self._opted_out):
            return BYPASS_OPT_OUT
        tenant: Any = None
        if self._resolver is None:
            # The default resolver's cache, read here first: this is every send's path.
            try:
                tenant = self._tenant_cache.get((options.get("org_id"), options.get("env_id")))
            except TypeError:  # an unhashable id: the resolver says it is invalid
                tenant = None
        if tenant is None:
            tenant = self._resolve_tenant(message)
            if tenant is None:
                return BYPASS_NO_TENANT
            if tenant is _TENANT_FAILED:
                return TENANT_ERROR
        if not intercepted:
            return BYPASS_UNINTERCEPTED
        holds = self._holds
        limits = holds.limits(tenant) if holds is not None else None
        if holds is not None and limits is not None and limits.paused:
            # Diverting from here: after a resume, sends join the backlog, not overtake it.
            self._trip.divert(tenant)
            return holds.accept(message, tenant, limits, BUFFER_ERROR)
        org_id = tenant.org_id
        enrolled = self._enrols_all or org_id in self._enrolled_orgs or self._runtime_enrolled(org_id)
        if not enrolled:
            if holds is not None and holds.backlogged and tenant in holds.backlogged:
                joined = holds.join_backlog(message, tenant, BUFFER_ERROR)
                if joined is not None:
                    return joined
            if not self._shadow_mode:
                return NOT_ENROLLED
        # No I/O: the local evaluator counts here; the exact one says "evaluate" or "fused".
        verdict = self._count(tenant, enrolled)
        if verdict is _V_BELOW:
            return BELOW[enrolled]
        if verdict is _V_TRIPPED or (verdict is _V_GLOBAL and not enrolled):
            return self._would_mollify(message, tenant, None, verdict is _V_GLOBAL)
        if not self._breaker.allow():
            self._telemetry.record_fail_open(FailOpenStage.BREAKER)
            return BREAKER_OPEN[enrolled]
        if not self._layout_confirmed():
            self._telemetry.record_fail_open(FailOpenStage.LAYOUT)
            return TRIP_ERROR[enrolled]
        if limits is not None:
            # Under a cap: the trip check and the capped write are two calls (no fused script).
            assert holds is not None
            if verdict is _V_GLOBAL:
                return holds.accept(message, tenant, limits, BUFFER_ERROR)
            return self._evaluate(message, tenant, enrolled, limits)
        if verdict is _V_GLOBAL:
            return self._accept(message, tenant, Reason.GLOBAL_RATE)
        if verdict is _V_DIVERTING:
            return self._evaluate_and_accept(message, tenant)
        return self._evaluate(message, tenant, enrolled, limits)

    def _resolve_tenant(self, message: dramatiq.Message[Any]) -> Tenant | object | None:
        if self._resolver is None:
            tenant = self._option_tenants.of(message.options)
            if tenant is INVALID:
                options = message.options
                self._fail_open(
                    FailOpenStage.TENANT,
                    "Message %r has an org_id or env_id that is neither str nor int (%r, %r); not gated.",
                    message.message_id,
                    options.get("org_id"),
                    options.get("env_id"),
                )
                return _TENANT_FAILED
            return tenant
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
        usable = checked(tenant)
        if usable is None:
            self._fail_open(
                FailOpenStage.TENANT,
                "The tenant resolver returned %r for message %r, not a Tenant of str or int ids; not gated.",
                tenant,
                message.message_id,
            )
            return _TENANT_FAILED
        return usable

    def _evaluate(
        self,
        message: dramatiq.Message[Any],
        tenant: Tenant,
        enrolled: bool,
        limits: TenantLimits | None = None,
    ) -> Decision:
        """One round trip (the local evaluator folds this process's counts for the env); a tripped
        enrolled env pays a second one for the write (first time only)."""
        trip = self._call(FailOpenStage.TRIP, message, tenant, lambda: _checked(self._trip.evaluate(tenant)))
        if trip is _FAILED:
            return TRIP_ERROR[enrolled]
        if not trip.tripped:
            return BELOW[enrolled]
        if not enrolled:
            return self._would_mollify(message, tenant, trip.count, False)
        self._trip.divert(tenant)
        if self._holds is not None and limits is not None:
            return self._holds.accept(message, tenant, limits, BUFFER_ERROR)
        if not self._breaker.allow():
            self._telemetry.record_fail_open(FailOpenStage.BREAKER)
            return BREAKER_OPEN[True]
        return self._accept(message, tenant, Reason.PER_ENV_RATE)

    def _accept(self, message: dramatiq.Message[Any], tenant: Tenant, reason: Reason) -> Decision:
        """Write the message to the buffer (one round trip); a failed write goes to the broker."""
        accepted = self._call(
            FailOpenStage.BUFFER_WRITE,
            message,
            tenant,
            lambda: self._backend.accept(
                message.message_id, org_id=tenant.org_id, env_id=tenant.env_id, payload=message.encode()
            ),
        )
        if accepted is _FAILED:
            return BUFFER_ERROR
        if reason is Reason.GLOBAL_RATE:
            self._trip.divert(tenant)  # its backlog keeps the env diverting after the ceiling
        return self._mollified(message, tenant, bool(accepted), reason)

    def _evaluate_and_accept(self, message: dramatiq.Message[Any], tenant: Tenant) -> Decision:
        """The env tripped recently: evaluate and write in one script, one round trip."""
        # A lost reply may hide a stored entry: then the broker gets a copy too (same message
        # id, so the duplicate is recognisable). Dropping the message would be worse.
        reply = self._call(
            FailOpenStage.TRIP,
            message,
            tenant,
            lambda: _checked(
                self._backend.evaluate_trip_and_accept(
                    message.message_id,
                    org_id=tenant.org_id,
                    env_id=tenant.env_id,
                    payload=message.encode(),
                    window_ms=self._window_ms,
                    threshold=self._threshold,
                    hold_ms=self._hold_ms,
                )
            ),
        )
        if reply is _FAILED:
            return TRIP_ERROR[True]
        trip, accepted = reply
        if not trip.tripped:
            self._trip.cool(tenant, trip.count)
            return BELOW[True]
        self._trip.divert(tenant)
        return self._mollified(message, tenant, bool(accepted), Reason.PER_ENV_RATE)

    def _call(
        self, stage: FailOpenStage, message: dramatiq.Message[Any], tenant: Tenant, call: Callable[[], _T]
    ) -> _T:
        """``call()``, its outcome recorded on the breaker; ``_FAILED`` (fail-open counted and
        logged) when it raised."""
        try:
            result = call()
        except Exception as exc:
            self._breaker.record(exc)
            what = "Trip evaluation failed for" if stage is FailOpenStage.TRIP else "Could not buffer"
            self._fail_open(
                stage,
                what + " message %r of org %r env %r; it goes to the broker.",
                message.message_id,
                tenant.org_id,
                tenant.env_id,
                exc=exc,
            )
            return _FAILED  # type: ignore[no-any-return]
        self._breaker.record_success()
        return result

    def _would_mollify(
        self, message: dramatiq.Message[Any], tenant: Tenant, count: int | None, fleet_wide: bool
    ) -> Decision:
        self._notices.would_mollify(message, tenant, count, fleet_wide)
        return SHADOW_GLOBAL if fleet_wide else SHADOW_LOG

    def _mollified(
        self, message: dramatiq.Message[Any], tenant: Tenant, accepted: bool, reason: Reason
    ) -> Decision:
        if not accepted:
            self._notices.duplicate(message, tenant)
            return DUPLICATE_ID
        self._telemetry.record_buffered(mode=self._mode)
        self._notices.buffered(message, tenant, reason is Reason.GLOBAL_RATE)
        return MOLLIFY[self._mode_setting, reason]

    def _fold_failed(self, exc: Exception) -> None:
        self._fail_open(FailOpenStage.TRIP, "A background fold of trip counts failed (not counted).", exc=exc)

    def _fail_open(self, stage: FailOpenStage, msg: str, *args: Any, exc: Exception | None = None) -> None:
        self._telemetry.record_fail_open(stage)
        self._notices.fail_open(stage, msg, *args, exc=exc)


def _checked(reply: _T) -> _T:
    """``reply``, after checking that it reads as a trip decision (garbage fails open)."""
    trip = reply[0] if isinstance(reply, tuple) else reply
    if not isinstance(trip, TripDecision):
        raise TypeError(f"the trip evaluator returned {reply!r}, not a TripDecision")
    return reply
