"""What the operator controls plug into a drainer: the rules, the fleet gauges, the cancel check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..buffer.rules import NO_RULES, TenantRules
from ..models import BufferEntry

__all__ = ["DrainHooks"]


def _no_rules() -> TenantRules:
    return NO_RULES


@dataclass(frozen=True)
class DrainHooks:
    """Parameters:

    rules: The operator's rules in force (``RulesView.current``): paused tenants are skipped,
      weights honoured (see :mod:`.turns`). Defaults to none.
    report_gauges: Reports the fleet's gauges, called about once a second
      (``FleetGauges.report``). Defaults to the drainer setting the depth gauge itself.
    popped: Told of each batch right before it goes to the handlers (``CancelCheck.popped``).
      Defaults to nothing.
    declared_elsewhere: Whether a live drainer of the fleet declares an actor this process does
      not (``ActorRegistry.declares``): its entries go back untried. Defaults to "no".
    """

    rules: Callable[[], TenantRules] = _no_rules
    report_gauges: Callable[[], object] | None = None
    popped: Callable[[Sequence[BufferEntry]], None] | None = None
    declared_elsewhere: Callable[[str], bool] | None = None
