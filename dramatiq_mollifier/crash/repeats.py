"""Redeliveries of attempts that are already over: their ack or nack died with the worker process.

A broker acks and nacks asynchronously: the worker thread hands the ack to the consumer, which
sends it a moment later. A process that dies in that moment (the next message segfaults it) takes
the ack with it, and the broker delivers the message again. For a message whose attempt was
retried, that repeat runs next to its own retry, with the old ``retries`` count, and a crash loop
grows past ``max_retries``; for one that was failed, it runs once more and is dead-lettered twice.

So each attempt that is over is remembered, in the message's ``done`` hash (``lua/conclude.lua``):

* **superseded**: a retry of attempt N was enqueued (``after_enqueue`` sees ``retries`` N+1), so
  every delivery of attempts 0..N is a repeat. It is acked without running.
* **failed**: attempt N was rejected (``after_nack``). A delivery of attempt N is a repeat when
  the broker says it is the same publish (the same ``redis_message_id`` on RedisBroker, the
  redelivery flag on RabbitMQ), or when it comes within ``repeat_window_ms`` of the failure (a
  delay queue publishes a due message again when the ack of its first publish was lost). It is
  failed again without running, so it still reaches the dead letters. After the window, a fresh
  publish of the same message (an operator re-sending a dead letter) runs.

Successful attempts are not remembered (that would cost a write per message): a message that
succeeded just before its worker died may still run twice, as with Dramatiq alone.
"""

from __future__ import annotations

import logging
import threading
from typing import Literal

from dramatiq import Message
from dramatiq.broker import MessageProxy
from opentelemetry import metrics

__all__ = ["Attempt", "RepeatLog", "attempt_of"]

logger = logging.getLogger(__name__)


class Attempt:
    """Which attempt a delivery is: its ``retries`` option and the broker's publish identity."""

    __slots__ = ("number", "publish_id", "redelivered")

    def __init__(self, number: int, publish_id: str, redelivered: bool) -> None:
        self.number = number
        self.publish_id = publish_id
        self.redelivered = redelivered


def attempt_of(message: MessageProxy | Message[object]) -> Attempt:
    """The attempt ``message`` carries (``retries`` is 0 on a first delivery)."""
    options = message.options
    retries = options.get("retries")
    publish_id = options.get("redis_message_id")
    return Attempt(
        number=retries if isinstance(retries, int) and retries >= 0 else 0,
        publish_id=publish_id if isinstance(publish_id, str) else "",
        redelivered=getattr(message, "redelivered", False) is True,
    )


class RepeatLog:
    """Counts and logs refused repeats; remembers each worker thread's current attempt."""

    def __init__(self, meter: metrics.Meter) -> None:
        self._repeats = meter.create_counter(
            "mollifier.crash_repeats",
            unit="{delivery}",
            description="Redeliveries of attempts already over (their ack or nack died with "
            "the worker process), not run again, by kind.",
        )
        self._local = threading.local()

    def started(self, message_id: str, attempt: Attempt) -> None:
        self._local.current = (message_id, attempt)

    def current(self, message_id: str) -> Attempt | None:
        """The attempt this thread last started, if it was of ``message_id``."""
        current: tuple[str, Attempt] | None = getattr(self._local, "current", None)
        return current[1] if current is not None and current[0] == message_id else None

    def refused(self, message_id: str, attempt: Attempt, kind: Literal["superseded", "failed"]) -> None:
        self._repeats.add(1, {"kind": kind})
        logger.warning(
            "mollifier.crash_repeat message_id=%r retries=%d kind=%s action=%s",
            message_id,
            attempt.number,
            kind,
            "acked" if kind == "superseded" else "failed",
        )
