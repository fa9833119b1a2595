"""Skip the broker write for a diverted message: the one place that works around Dramatiq.

Dramatiq 2.x gives a middleware no way to skip the broker write from ``before_enqueue``: a plain
exception raised there is logged and swallowed (the message is still written), and a
``MiddlewareError`` reaches the caller of ``send()``. Upstream tracks a native hook in issue #276
(PRs #673 and #890); when one lands, this module is what gets replaced.

Until then: :func:`install` shadows the broker instance's ``enqueue`` with a wrapper that opens an
:class:`EnqueueCall` for the message, calls the original ``enqueue``, and turns :class:`Diverted`
(a private ``MiddlewareError``, raised by the gate in ``before_enqueue`` through :func:`divert`)
into a normal return of the message as the buffer holds it, with the options ``mollified: True``
and ``mollifier_reason`` (and without the options a broker assigns to what it stores, such as
RedisBroker's ``redis_message_id``). Nothing is written to the broker and no ``after_enqueue``
is emitted, since nothing was enqueued.

The call also lets the gate recognise a second ``before_enqueue`` for the same message within one
``enqueue``: RabbitmqBroker emits it again each time it retries a failed publish.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NoReturn

import dramatiq
from dramatiq.middleware import MiddlewareError

__all__ = [
    "BROKER_ASSIGNED_OPTIONS",
    "MOLLIFIED_OPTION",
    "MOLLIFIED_REASON_OPTION",
    "Diverted",
    "EnqueueCall",
    "current_call",
    "divert",
    "install",
    "is_installed",
]

#: Set to True on the message a diverted ``send()`` returns.
MOLLIFIED_OPTION = "mollified"
#: Why that message was diverted (``per_env_rate``).
MOLLIFIED_REASON_OPTION = "mollifier_reason"
#: Options a broker adds to the message it stores; a diverted message was stored by no broker.
BROKER_ASSIGNED_OPTIONS = frozenset({"redis_message_id"})

# Set on a broker instance once its enqueue is wrapped.
_INSTALLED_ATTRIBUTE = "_mollifier_interception"

_install_lock = threading.Lock()
_local = threading.local()


class Diverted(MiddlewareError):
    """The gate sent this message to the buffer; never escapes the ``enqueue`` wrapper."""

    def __init__(self, message: dramatiq.Message[Any], reason: str) -> None:
        super().__init__(message.message_id)
        self.message = message
        self.reason = reason


@dataclass(slots=True)
class EnqueueCall:
    """One call of a wrapped ``broker.enqueue`` on this thread."""

    broker: dramatiq.Broker
    message_id: str
    #: The gate has made its one decision for this message.
    decided: bool = False


def current_call(broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> EnqueueCall | None:
    """The wrapped ``enqueue`` call ``message`` is being enqueued in, or None if there is none.

    None means the broker write cannot be skipped: the message reached ``before_enqueue`` through
    an unwrapped path (the broker was not wrapped yet, or someone called the class's ``enqueue``).
    """
    call: EnqueueCall | None = getattr(_local, "call", None)
    if call is None or call.broker is not broker or call.message_id != message.message_id:
        return None
    return call


def divert(message: dramatiq.Message[Any], reason: str) -> NoReturn:
    """Skip the broker write of ``message``; ``send()`` returns it, marked mollified for ``reason``.
    Only inside a :func:`current_call`."""
    raise Diverted(message, reason)


def _as_diverted(sent: dramatiq.Message[Any], exc: Diverted) -> dramatiq.Message[Any]:
    """The message ``send()`` returns for ``sent``: the buffered one, marked, minus broker options."""
    result = exc.message.copy(options={MOLLIFIED_OPTION: True, MOLLIFIED_REASON_OPTION: exc.reason})
    for name in BROKER_ASSIGNED_OPTIONS.difference(sent.options):
        result.options.pop(name, None)  # the copy's own dict
    return result


def is_installed(broker: dramatiq.Broker) -> bool:
    """Whether :func:`install` wrapped this broker's ``enqueue``."""
    return _INSTALLED_ATTRIBUTE in vars(broker)


def install(broker: dramatiq.Broker) -> None:
    """Wrap ``broker.enqueue`` (this instance only) so a diverted message skips the write. Idempotent."""
    if _INSTALLED_ATTRIBUTE in vars(broker):
        return
    with _install_lock:
        if _INSTALLED_ATTRIBUTE in vars(broker):
            return
        original = broker.enqueue

        def enqueue(message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
            previous = getattr(_local, "call", None)
            _local.call = EnqueueCall(broker, message.message_id)
            try:
                return original(message, delay=delay)
            except Diverted as exc:
                return _as_diverted(message, exc)
            finally:
                _local.call = previous

        enqueue.__doc__ = original.__doc__
        setattr(broker, "enqueue", enqueue)  # noqa: B010 (mypy refuses assigning to a method)
        setattr(broker, _INSTALLED_ATTRIBUTE, True)
