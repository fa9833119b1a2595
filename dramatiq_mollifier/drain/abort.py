"""dramatiq-abort support: a buffered message whose abort is pending is never re-enqueued.

``dramatiq_abort.abort(message_id)`` records a pending abort that the ``Abortable`` middleware of
the worker that receives the message honours. A message in the mollifier's buffer is not in the
broker yet, so the drainer honours it instead: right before re-enqueuing an entry, it takes the
message's pending "cancel" event (as the worker would) and drops the message. Pending aborts
expire (``abort_ttl``, 90 s by default): a message buffered for longer than that after its abort
was issued is delivered as if never aborted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq

__all__ = ["pending_abort_check"]


def _abortable(broker: dramatiq.Broker) -> Any | None:
    for middleware in broker.middleware:
        kind = type(middleware)
        if kind.__name__ == "Abortable" and kind.__module__.startswith("dramatiq_abort"):
            return middleware
    return None


def pending_abort_check(broker: dramatiq.Broker) -> Callable[[dramatiq.Message[Any]], bool] | None:
    """A check that takes a message's pending abort (True if it had one), or None when the broker
    has no dramatiq-abort ``Abortable`` middleware."""
    abortable = _abortable(broker)
    if abortable is None:
        return None
    from dramatiq_abort.middleware import AbortMode

    def aborted(message: dramatiq.Message[Any]) -> bool:
        actor = broker.get_actor(message.actor_name)
        if not abortable.is_abortable(actor, message):
            return False
        key = abortable.id_to_key(message.message_id, AbortMode.CANCEL)
        return abortable.backend.poll(key) is not None

    return aborted
