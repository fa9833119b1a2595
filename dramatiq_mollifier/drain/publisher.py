"""Broker writes on a few long-lived threads, for brokers that open a connection per thread.

Dramatiq's ``RabbitmqBroker`` keeps one AMQP connection (and channel) per thread that enqueues,
and never closes the connection of a thread that ends. Drain handlers calling ``enqueue``
themselves would open one connection per handler thread (16 by default), and leak them all
whenever the drainer stops and starts again (its handler threads are new each time). A
:class:`SharedPublisher` runs every drained enqueue on at most ``connections`` threads of its own
that live as long as it does, so the drainer holds that many broker connections, however many
handler threads it runs and however often it is restarted. Brokers with a shared connection pool
(Redis, the stub) need none of this: :func:`writers_for` returns their own ``enqueue``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dramatiq

from ..settings import default_of
from .amqp_chunks import chunked_publish_for
from .batch_enqueue import EnqueueMany, pipelined_enqueue_for

__all__ = [
    "DEFAULT_BROKER_CONNECTIONS",
    "SharedPublisher",
    "warn_without_publish_confirms",
    "writers_for",
]

logger = logging.getLogger(__name__)

#: Broker connections a drainer's handlers share on a per-thread-connection broker.
DEFAULT_BROKER_CONNECTIONS: int = default_of("drain_broker_connections")

#: What a drain handler calls to put a message on the broker.
Enqueue = Callable[[dramatiq.Message[Any]], object]


class SharedPublisher:
    """Runs ``broker.enqueue`` on at most ``connections`` long-lived threads (each with its own
    connection, opened on first use); the calling handler thread waits for the result.

    Parameters:
      broker: The broker to enqueue on.
      connections: Threads, hence broker connections, at most. Defaults to 2.
      publish_many: Writes a chunk on the calling thread's connection (a
        :class:`~.amqp_chunks.ChunkedAmqpPublish`). Defaults to None: ``enqueue`` per message.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        connections: int = DEFAULT_BROKER_CONNECTIONS,
        publish_many: EnqueueMany | None = None,
    ) -> None:
        if connections < 1:
            raise ValueError(f"connections must be at least 1, got {connections!r}")
        self._broker = broker
        self.connections = connections
        self._publish_many = publish_many
        self._executor = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="mollifier-publish")

    def enqueue(self, message: dramatiq.Message[Any]) -> object:
        """Enqueue on one of the publisher's threads; raises what the broker raised."""
        return self._executor.submit(self._broker.enqueue, message).result()

    def enqueue_many(self, messages: Sequence[dramatiq.Message[Any]]) -> list[BaseException | None]:
        """Enqueue ``messages`` one after another on one of the publisher's threads: one hand-over
        between threads for the chunk instead of one per message. One result per message: None
        when it was enqueued, else what the broker raised for it.
        """
        return self._executor.submit(self._publish_all, messages).result()

    def _publish_all(self, messages: Sequence[dramatiq.Message[Any]]) -> list[BaseException | None]:
        if self._publish_many is not None:
            return self._publish_many(messages)
        results: list[BaseException | None] = []
        for message in messages:
            try:
                self._broker.enqueue(message)
            except Exception as exc:
                results.append(exc)
            else:
                results.append(None)
        return results


def per_thread_connections(broker: dramatiq.Broker) -> bool:
    """Whether ``broker`` opens a connection per thread that enqueues (RabbitMQ)."""
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError:  # pragma: no cover - pika comes with dramatiq[rabbitmq] only
        return False
    return isinstance(broker, RabbitmqBroker)


def writers_for(
    broker: dramatiq.Broker, *, connections: int = DEFAULT_BROKER_CONNECTIONS
) -> tuple[Enqueue, EnqueueMany | None]:
    """What drain handlers should call to put one message, and a chunk of messages, on
    ``broker``: a :class:`SharedPublisher`'s for a per-thread-connection broker (a chunk in one
    hand-over to a publisher thread and one flush, see :mod:`.amqp_chunks`), a pipelined write
    for a ``RedisBroker`` (a chunk in one round trip, see :mod:`.batch_enqueue`), else the
    broker's own ``enqueue`` and no chunk writer.
    """
    if per_thread_connections(broker):
        warn_without_publish_confirms(broker)
        publisher = SharedPublisher(broker, connections=connections, publish_many=chunked_publish_for(broker))
        return publisher.enqueue, publisher.enqueue_many
    return broker.enqueue, pipelined_enqueue_for(broker)


def warn_without_publish_confirms(broker: dramatiq.Broker) -> None:
    """Warn when ``broker`` is a RabbitMQ broker that publishes without confirms.

    The drainer acks a buffered entry once its message is published. Its chunks are confirmed
    whatever the broker's setting (:mod:`.amqp_chunks`), but a message it has to publish through
    ``enqueue`` (after a nack, a returned message, a lost channel) is, without confirms (Dramatiq's
    default), only written to the socket: a connection lost at that moment loses it, and in
    ``divert`` mode the buffer held the only copy.
    """
    if getattr(broker, "confirm_delivery", True):
        return
    logger.warning(
        "mollifier.drainer: this RabbitmqBroker publishes without confirms, so a drained message "
        "published through enqueue (after a nack or a lost channel; chunks are confirmed anyway) "
        "is lost if its publish is (the buffer acks it once enqueue returns); create it with "
        "RabbitmqBroker(..., confirm_delivery=True)"
    )
