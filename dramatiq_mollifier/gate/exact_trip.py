"""The exact trip evaluator (``trip_evaluator=exact``): one Redis round trip per gated send.

Each send is counted in the fleet's window by ``evaluate_trip.lua`` at once. An env seen tripped
in this process is remembered for a hint period (``max(trip_hold_ms, trip_window_ms)``), during
which its sends go straight to the fused script (count and write in one call) instead of paying
a second round trip for the write. Same interface as :class:`~.local_trip.LocalTrip`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from ..models import Tenant, TripDecision
from .local_trip import Verdict

__all__ = ["MAX_HOT_ENVS", "ExactTrip", "TripBackend"]

#: Envs whose recent trip this process remembers; the memory is emptied when it fills.
MAX_HOT_ENVS = 10_000


class TripBackend(Protocol):
    """The buffer's per-send trip evaluation."""

    def evaluate_trip(
        self, org_id: str, env_id: str, *, window_ms: int, threshold: int, hold_ms: int
    ) -> TripDecision: ...


class ExactTrip:
    """Every gated send is evaluated in Redis; a recent trip makes the next sends use the fused script.

    Parameters:
      backend: The evaluator.
      window_ms, threshold, hold_ms: The per-env trip settings.
      clock: Seconds from an arbitrary origin, for the hint. Defaults to ``time.monotonic``.
    """

    def __init__(
        self,
        *,
        backend: TripBackend,
        window_ms: int,
        threshold: int,
        hold_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._trip = {"window_ms": window_ms, "threshold": threshold, "hold_ms": hold_ms}
        self._hint_s = max(hold_ms, window_ms) / 1000
        self._clock = clock
        # (org, env) -> until when (clock) this process believes the env is tripped.
        self._hot: dict[Tenant, float] = {}

    def count(self, tenant: Tenant, enrolled: bool) -> Verdict:
        """DIVERTING for an enrolled env tripped recently (the fused script), else CROSSED (evaluate)."""
        if enrolled:
            until = self._hot.get(tenant)
            if until is not None and until > self._clock():
                return Verdict.DIVERTING
        return Verdict.CROSSED

    def evaluate(self, tenant: Tenant) -> TripDecision:
        """Count one send in the fleet's window and say whether the env is tripped."""
        return self._backend.evaluate_trip(tenant.org_id, tenant.env_id, **self._trip)

    def divert(self, tenant: Tenant) -> None:
        """``tenant`` was found tripped: use the fused script for the hint period."""
        if len(self._hot) >= MAX_HOT_ENVS and tenant not in self._hot:
            self._hot.clear()
        self._hot[tenant] = self._clock() + self._hint_s

    def cool(self, tenant: Tenant, count: int) -> None:
        """``tenant`` was found not tripped."""
        self._hot.pop(tenant, None)
