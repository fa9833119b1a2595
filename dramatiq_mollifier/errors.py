"""The exceptions raised by dramatiq-mollifier."""

from __future__ import annotations

from dramatiq.middleware import MiddlewareError, SkipMessage

__all__ = [
    "BrokerUnavailableError",
    "BufferCapExceededError",
    "BufferUnavailableError",
    "CrashNotRetried",
    "DuplicateMollifierError",
    "EntryCancelled",
    "InvalidArgumentError",
    "MiddlewareConfigurationError",
    "MollifierConfigurationError",
    "MollifierError",
    "UndeliverableEntryError",
    "UnknownDestinationError",
    "WorkerCrashed",
]


class MollifierError(Exception):
    """Base class for every error raised by this package."""


class MollifierConfigurationError(MollifierError, ValueError):
    """A setting has an impossible value. The message names the setting."""


class MiddlewareConfigurationError(MiddlewareError, MollifierConfigurationError):
    """A configuration mistake found in a Dramatiq hook (an actor's declaration, a worker's boot):
    a ``MiddlewareError``, which Dramatiq's ``emit_before`` lets through instead of logging it."""


class DuplicateMollifierError(MiddlewareConfigurationError):
    """A second ``Mollifier`` on one broker: it would never gate (the first decides each enqueue)
    and would run a second drainer."""


class InvalidArgumentError(MollifierError, ValueError):
    """An operator control was given an argument outside its domain (an empty org id, a cap out
    of bounds). The CLI reports it as a usage error."""


class BufferUnavailableError(MollifierError):
    """Redis could not be reached, timed out or answered garbage (wraps the redis-py error)."""


class BufferCapExceededError(MiddlewareError, MollifierError):
    """``send()`` of a tenant whose buffered messages are at their cap, under the ``reject``
    overflow policy (``MOLLIFIER_CAP_OVERFLOW=reject``). The message went nowhere: the caller
    decides (retry later, report to its user). A ``MiddlewareError``, so that Dramatiq lets it
    out of ``before_enqueue`` to the caller of ``send()``.
    """

    def __init__(self, message: str, *, org_id: str, env_id: str, scope: str, limit: int) -> None:
        super().__init__(message)
        #: The tenant of the rejected message.
        self.org_id = org_id
        self.env_id = env_id
        #: Which cap was reached: ``"env"`` or ``"org"``.
        self.scope = scope
        #: That cap.
        self.limit = limit


class BrokerUnavailableError(MollifierError):
    """Drain handlers could not reach the broker: their entries went back untried."""


class UndeliverableEntryError(MollifierError):
    """A buffered entry can never be delivered (undecodable payload, unknown actor or queue).

    A drain handler raises it to dead-letter the entry at once, without retries.
    """


class UnknownDestinationError(UndeliverableEntryError):
    """A buffered entry's actor or queue is not declared here (yet: a deploy may be rolling out).

    The drainer retries it for ``drain_unknown_actor_grace_ms`` before it dead-letters it.
    """

    def __init__(self, message: str, *, actor_name: str) -> None:
        super().__init__(message)
        #: The actor the entry is for.
        self.actor_name = actor_name


class EntryCancelled(MollifierError):
    """A drain handler found its entry cancelled (by an operator, or by a pending dramatiq-abort
    abort) right before the broker write: the message was not enqueued, and never will be."""


class WorkerCrashed(MiddlewareError, MollifierError):
    """A previous delivery of this message died with its worker process.

    Raised before the actor runs so that Dramatiq's Retries middleware counts the
    crashed attempt under the actor's own retry policy.
    """

    def __init__(self, message: str, *, signal_name: str = "unknown", cause: str = "unknown") -> None:
        super().__init__(message)
        #: The signal that ended the crashed process (``"SIGSEGV"``, ...) or ``"unknown"``.
        self.signal_name = signal_name
        #: Why it died: ``native_crash``, ``shutdown``, ``oom``, ``time_limit`` or ``unknown``.
        self.cause = cause


class CrashNotRetried(WorkerCrashed, SkipMessage):
    """A crash of a kind not retried by default (out of memory, time limit): failed at once.

    A ``SkipMessage``, raised after ``message.fail()``, so Retries leaves it alone and the broker
    dead-letters the message (as Dramatiq's AgeLimit does).
    """
