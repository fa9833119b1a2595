"""The broker's enqueue hooks for a chunk writer, called as ``Broker.emit_before``/``emit_after`` do.

A chunk writer (:mod:`.batch_enqueue` for Redis, :mod:`.amqp_chunks` for RabbitMQ) writes many
drained messages without ``broker.enqueue``, so it calls the middleware's ``before_enqueue`` and
``after_enqueue`` itself. Only the middleware that define them get the call: looping over every
middleware of the broker (a dozen, most with no enqueue hook) for every drained message was about
a tenth of the drain's interpreter time in the worker process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware, MiddlewareError

__all__ = ["EnqueueHooks"]

#: A middleware's enqueue hook, bound: called with the broker, the message and the delay.
_Hook = Callable[[dramatiq.Broker, dramatiq.Message[Any], Any], object]


def _defined(middleware: Sequence[Middleware], name: str) -> list[_Hook]:
    """The bound ``name`` hooks of the middleware that define one (not the base's no-op)."""
    default = getattr(Middleware, name)
    return [getattr(m, name) for m in middleware if getattr(type(m), name, default) is not default]


class EnqueueHooks:
    """``broker``'s ``before_enqueue`` and ``after_enqueue`` hooks, in Dramatiq's order (after in
    reverse), read again whenever the broker's middleware list changes (``add_middleware`` after
    the drainer started).
    """

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker
        self._hooks_of: tuple[int, ...] = ()
        self._before: list[_Hook] = []
        self._after: list[_Hook] = []

    def refresh(self) -> None:
        """Read the hooks again if the middleware changed: once per chunk, not per message."""
        middleware = self._broker.middleware
        ids = tuple(map(id, middleware))
        if ids != self._hooks_of:
            self._before = _defined(middleware, "before_enqueue")
            self._after = _defined(list(reversed(middleware)), "after_enqueue")
            self._hooks_of = ids

    def any_besides(self, owner: object) -> bool:
        """Whether a middleware other than ``owner`` defines an enqueue hook (after :meth:`refresh`)."""
        return any(getattr(hook, "__self__", None) is not owner for hook in (*self._before, *self._after))

    def before(self, message: dramatiq.Message[Any]) -> None:
        """``before_enqueue``: a ``MiddlewareError`` is raised (the message must not be written),
        any other exception logged."""
        self._emit("before_enqueue", self._before, message)

    def after(self, message: dramatiq.Message[Any]) -> None:
        """``after_enqueue``: any exception logged."""
        self._emit("after_enqueue", self._after, message)

    def _emit(self, signal: str, hooks: list[_Hook], message: dramatiq.Message[Any]) -> None:
        for hook in hooks:
            try:
                hook(self._broker, message, None)
            except Exception as exc:
                if signal == "before_enqueue" and isinstance(exc, MiddlewareError):
                    raise
                self._broker.logger.critical("Unexpected failure in %s of %r.", signal, hook, exc_info=True)
