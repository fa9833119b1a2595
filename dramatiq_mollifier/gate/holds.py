"""The operator's rules at the gate: a paused tenant is buffered whatever its rate, and a tenant
under a cap is buffered only up to it, with an explicit overflow policy.

:class:`TenantHolds` reads the rules from a :class:`~dramatiq_mollifier.buffer.rules.RulesView`
(no I/O per send) and the caps from the settings. When a tenant has neither a pause nor a cap, it
answers None and the cascade runs as before (and keeps its one-round-trip fused path); otherwise
the write goes through ``accept_capped.lua``, which checks the caps against the depth counters
atomically, so two processes sending for one tenant never take it past its cap together.

Overflow (``cap_overflow``): ``pass_through`` sends the message to the broker (reason
``cap_pass_through``), ``reject`` raises :class:`~dramatiq_mollifier.errors.BufferCapExceededError`
from ``send()`` (outcome ``rejected``), ``dead_letter`` stores it as a dead letter with error code
``cap_exceeded`` (reason ``cap_dead_letter``), for ``failed retry`` later.

After a resume, a tenant's sends join its paused backlog rather than overtake it. For an enrolled
org the trip evaluator sees to that (a paused send marks the env diverting); for an org that is
not enrolled, which the evaluator never sees, :meth:`TenantHolds.join_backlog` does, in each
process that buffered sends of the env while it was paused, until the backlog is drained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import dramatiq

from ..breaker import CircuitBreaker
from ..buffer.rules import TenantRules
from ..errors import BufferCapExceededError
from ..models import CapOverflow, Tenant, TripDecision
from ..settings import MollifierMode, MollifierSettings
from ..telemetry import FailOpenStage, Outcome, Reason, Telemetry, ThrottledLog
from .decisions import Decision

__all__ = ["FusedAcceptBackend", "HoldBackend", "TenantHolds", "TenantLimits"]

logger = logging.getLogger(__name__)

_STORED, _DUPLICATE = 1, 0
_BREAKER_OPEN = Decision(Outcome.PASS_THROUGH, Reason.BREAKER_OPEN, enrolled=True)
_OVER_ENV, _OVER_ORG = (2, 4), (3, 5)
_DUPLICATE_ID = Decision(Outcome.PASS_THROUGH, Reason.DUPLICATE_ID, enrolled=True)
#: The envs of orgs not enrolled that this process buffered while paused, remembered at most.
MAX_BACKLOGGED = 10_000
# A threshold no window reaches: the fused script then diverts only behind a backlog (or a hold).
_BACKLOG_ONLY = 2**53


class FusedAcceptBackend(Protocol):
    """The buffer's fused script: count, then buffer only when tripped (or backlogged)."""

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


class HoldBackend(FusedAcceptBackend, Protocol):
    """What the holds need from the buffer."""

    def accept_capped(
        self,
        message_id: str,
        *,
        org_id: str,
        env_id: str,
        payload: bytes,
        env_cap: int | None,
        org_cap: int | None,
        dead_letter: bool,
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """The rules in force for one tenant: paused, and its env's and org's caps."""

    paused: bool
    env_cap: int | None
    org_cap: int | None


class TenantHolds:
    """Applies pauses and caps to the sends of a tenant.

    Parameters:
      settings: ``cap_per_env``, ``cap_per_org``, ``cap_overflow`` and ``mode``.
      backend: The buffer.
      telemetry: Where decisions and fail-open events are counted.
      rules: The rules in force (``RulesView.current``), read without I/O.
      breaker: The gate's circuit breaker.
      layout_confirmed: Whether the key layout is known to match the fleet's (see the gate's).
    """

    def __init__(
        self,
        settings: MollifierSettings,
        *,
        backend: HoldBackend,
        telemetry: Telemetry,
        rules: Callable[[], TenantRules],
        breaker: CircuitBreaker,
        layout_confirmed: Callable[[], bool] = lambda: True,
    ) -> None:
        self._backend = backend
        self._layout_confirmed = layout_confirmed
        self._telemetry = telemetry
        self._rules = rules
        self._breaker = breaker
        self._env_cap = settings.cap_per_env
        self._org_cap = settings.cap_per_org
        self._overflow = settings.cap_overflow
        self._uncapped = self._env_cap is None and self._org_cap is None
        self._mode = settings.mode.value
        divert = settings.mode is MollifierMode.DIVERT
        self._paused = Decision(Outcome.MOLLIFY, Reason.PAUSED, enrolled=True, divert=divert)
        self._capped = Decision(Outcome.MOLLIFY, Reason.PER_ENV_RATE, enrolled=True, divert=divert)
        self._dead_lettered = Decision(Outcome.MOLLIFY, Reason.CAP_DEAD_LETTER, enrolled=True, divert=divert)
        self._warnings = ThrottledLog(logger)
        self._window_ms = settings.trip_window_ms
        #: Envs this process buffered while paused, for :meth:`join_backlog` (the gate reads it
        #: before calling, for orgs not enrolled: no call on their every send).
        self.backlogged: set[Tenant] = set()

    def limits(self, tenant: Tenant) -> TenantLimits | None:
        """The tenant's pause and caps; None when it has none (the common case: no I/O)."""
        rules = self._rules()
        if self._uncapped and not rules.paused and not rules.caps:
            return None  # nothing paused or capped anywhere: one look, no lookups
        paused = rules.is_paused(tenant.org_id, tenant.env_id)
        env_cap, org_cap = rules.limits(tenant.org_id, tenant.env_id, self._env_cap, self._org_cap)
        if not paused and env_cap is None and org_cap is None:
            return None
        return TenantLimits(paused, env_cap, org_cap)

    def held_when_due(
        self,
        message: dramatiq.Message[Any],
        tenant_of: Callable[[dramatiq.Message[Any]], object],
        fallback: Decision,
    ) -> Decision | None:
        """Buffer ``message``, due from the delay queue, if its tenant is paused; else None.

        With nothing paused anywhere (the rules, read in the background) the tenant is not
        looked up at all."""
        if not self._rules().paused:
            return None
        tenant = tenant_of(message)
        if not isinstance(tenant, Tenant):
            return None
        limits = self.limits(tenant)
        if limits is None or not limits.paused:
            return None
        return self.accept(message, tenant, limits, fallback)

    def accept(
        self, message: dramatiq.Message[Any], tenant: Tenant, limits: TenantLimits, fallback: Decision
    ) -> Decision:
        """Buffer ``message`` under ``limits`` (paused: whatever its rate; else it tripped).

        ``fallback`` is the cascade's decision for a Redis error (fail open); over a cap, the
        overflow policy decides (``reject`` raises :class:`BufferCapExceededError`).
        """
        refused = self._refused(fallback)
        if refused is not None:
            return refused
        overflow = self._overflow
        try:
            answer = self._backend.accept_capped(
                message.message_id,
                org_id=tenant.org_id,
                env_id=tenant.env_id,
                payload=message.encode(),
                env_cap=limits.env_cap,
                org_cap=limits.org_cap,
                dead_letter=overflow is CapOverflow.DEAD_LETTER,
            )
        except Exception as exc:
            return self._write_failed(message, tenant, exc, fallback)
        self._breaker.record_success()
        if answer == _STORED:
            if limits.paused:
                if len(self.backlogged) >= MAX_BACKLOGGED:
                    self.backlogged.clear()
                self.backlogged.add(tenant)
            self._buffered(message, tenant, limits.paused)
            return self._paused if limits.paused else self._capped
        if answer == _DUPLICATE:
            return _DUPLICATE_ID
        return self._overflowed(message, tenant, limits, answer)

    def join_backlog(
        self, message: dramatiq.Message[Any], tenant: Tenant, fallback: Decision
    ) -> Decision | None:
        """Buffer ``message`` of an org not enrolled behind its env's paused backlog, in one round
        trip; None once the backlog is drained (forgotten then: the cascade goes on as before)."""
        refused = self._refused(fallback)
        if refused is not None:
            return refused
        try:
            trip, accepted = self._backend.evaluate_trip_and_accept(
                message.message_id,
                org_id=tenant.org_id,
                env_id=tenant.env_id,
                payload=message.encode(),
                window_ms=self._window_ms,
                threshold=_BACKLOG_ONLY,
                hold_ms=0,
            )
        except Exception as exc:
            return self._write_failed(message, tenant, exc, fallback)
        self._breaker.record_success()
        if not trip.tripped:
            self.backlogged.discard(tenant)
            return None
        if not accepted:
            return _DUPLICATE_ID
        self._buffered(message, tenant, "backlog")
        return self._paused

    def _buffered(self, message: dramatiq.Message[Any], tenant: Tenant, paused: object) -> None:
        self._telemetry.record_buffered(mode=self._mode)
        logger.info(
            "mollifier.buffered message_id=%r org_id=%r env_id=%r mode=%s paused=%s",
            message.message_id,
            tenant.org_id,
            tenant.env_id,
            self._mode,
            paused,
        )

    def _refused(self, fallback: Decision) -> Decision | None:
        """The decision when the breaker is open or the layout unconfirmed (no Redis call), else None."""
        if not self._breaker.allow():
            self._telemetry.record_fail_open(FailOpenStage.BREAKER)
            return _BREAKER_OPEN
        if not self._layout_confirmed():
            self._telemetry.record_fail_open(FailOpenStage.LAYOUT)
            return fallback
        return None

    def _write_failed(
        self, message: dramatiq.Message[Any], tenant: Tenant, exc: Exception, fallback: Decision
    ) -> Decision:
        self._breaker.record(exc)
        self._telemetry.record_fail_open(FailOpenStage.BUFFER_WRITE)
        self._warnings.throttled_warning(
            "buffer_write",
            "mollifier fail-open (buffer_write): could not buffer message %r of org %r env %r; "
            "it goes to the broker. %s: %s",
            message.message_id,
            tenant.org_id,
            tenant.env_id,
            type(exc).__name__,
            exc,
        )
        return fallback

    def _overflowed(
        self, message: dramatiq.Message[Any], tenant: Tenant, limits: TenantLimits, answer: int
    ) -> Decision:
        scope, cap = ("env", limits.env_cap) if answer in _OVER_ENV else ("org", limits.org_cap)
        assert cap is not None
        self._warnings.throttled_warning(
            f"cap_{scope}",
            "mollifier: the %s cap of %d buffered messages is reached for org %r env %r; message %r "
            "is %s (cap_overflow=%s).",
            scope,
            cap,
            tenant.org_id,
            tenant.env_id,
            message.message_id,
            {"pass_through": "sent to the broker", "reject": "rejected", "dead_letter": "dead-lettered"}[
                self._overflow.value
            ],
            self._overflow.value,
        )
        if self._overflow is CapOverflow.DEAD_LETTER:
            return self._dead_lettered
        if self._overflow is CapOverflow.PASS_THROUGH:
            return Decision(Outcome.PASS_THROUGH, Reason.CAP_PASS_THROUGH, enrolled=True)
        self._telemetry.record_decision(Outcome.REJECTED, Reason.CAP_REJECTED, enrolled=True)
        raise BufferCapExceededError(
            f"org {tenant.org_id!r} env {tenant.env_id!r} has {cap} buffered messages, its {scope} "
            f"cap: message {message.message_id!r} was not sent",
            org_id=tenant.org_id,
            env_id=tenant.env_id,
            scope=scope,
            limit=cap,
        )
