"""Whose fault a handler error is: the broker's (unavailable) or the message's.

An entry whose handler could not reach the broker did nothing wrong: it goes back untried, with
no attempt consumed, and the drainer backs off as a whole. Only the other errors count toward
``drain_max_attempts``.
"""

from __future__ import annotations

import redis
from dramatiq.errors import BrokerConnectionError

from ..settings import default_of

__all__ = ["MAX_BACKOFF_MS", "backoff_ms", "is_unavailable", "retry_delay_ms"]

#: The first wait before a failed entry is tried again, in milliseconds; doubled per attempt.
RETRY_DELAY_MS: int = default_of("drain_retry_delay_ms")
# How far up __cause__/__context__ a wrapped error is looked for.
_CHAIN_DEPTH = 5
# AMQP's reply code when RabbitMQ closes a channel over a publish it refuses (among others).
_PRECONDITION_FAILED = 406


def _unavailable_types() -> tuple[type[BaseException], ...]:
    # Builtin ConnectionError and TimeoutError cover sockets refused, reset or timed out; any
    # redis-py error out of a RedisBroker is its server's (down, loading, read-only replica
    # after a failover, out of memory); pika's connection errors are RabbitMQ's.
    found: list[type[BaseException]] = [
        ConnectionError,
        TimeoutError,
        BrokerConnectionError,
        redis.RedisError,
    ]
    try:
        from pika.exceptions import AMQPConnectionError
    except ImportError:  # pragma: no cover - pika comes with dramatiq[rabbitmq] only
        pass
    else:
        found.append(AMQPConnectionError)
    return tuple(found)


_UNAVAILABLE = _unavailable_types()


def _size_refusal_types() -> tuple[type[BaseException], ...]:
    try:
        from pika.exceptions import ChannelClosedByBroker
    except ImportError:  # pragma: no cover - pika comes with dramatiq[rabbitmq] only
        return ()
    return (ChannelClosedByBroker,)


_SIZE_REFUSALS = _size_refusal_types()


def _refused_for_its_size(error: object) -> bool:
    """Whether RabbitMQ closed the channel over the message itself, for its size (406, larger
    than its ``max_message_size``): ``enqueue`` wraps that in a ``ConnectionClosed`` too, but
    trying the message again can never succeed, so it must spend its attempts, not stall the
    drainer. Other 406s (a queue declared with other arguments) stay the broker's."""
    return (
        isinstance(error, _SIZE_REFUSALS)
        and getattr(error, "reply_code", None) == _PRECONDITION_FAILED
        and "message size" in str(getattr(error, "reply_text", ""))
    )


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) says the broker could not be reached or used."""
    seen: BaseException | None = error
    for _ in range(_CHAIN_DEPTH):
        if seen is None:
            return False
        # Dramatiq's ConnectionClosed keeps the pika error it wraps as ``message``.
        if _refused_for_its_size(seen) or _refused_for_its_size(getattr(seen, "message", None)):
            return False
        if isinstance(seen, _UNAVAILABLE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_delay_ms(base_ms: int, attempts: int, cap_ms: int) -> int:
    """The wait before attempt ``attempts + 1`` of an entry: ``base_ms`` doubling, ``cap_ms`` at most."""
    return min(cap_ms, base_ms << min(max(attempts, 0), 20))


#: The longest the drainer's loop waits after consecutive ticks that raised, in milliseconds.
MAX_BACKOFF_MS = 5_000


def backoff_ms(poll_interval_ms: int, failures: int) -> int:
    """The wait after ``failures`` consecutive raising ticks: poll interval doubling, 5 s at most."""
    if failures < 1:
        return poll_interval_ms
    return min(MAX_BACKOFF_MS, poll_interval_ms << min(failures - 1, 32))
