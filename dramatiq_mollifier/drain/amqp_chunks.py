"""Drained messages onto a ``RabbitmqBroker`` a chunk at a time: one flush, one wait for confirms.

``RabbitmqBroker.enqueue`` publishes through pika's ``BlockingChannel``, which runs its I/O loop
until the socket is flushed after every message and, with publisher confirms, until the broker has
confirmed that message before the next is sent. Measured on a loopback node (pika 1.4, CPU of the
publishing thread): 167 µs per message without confirms; with them 323 µs and a round trip each
(1.06 ms of wall time). In ``bench_smoothing.py`` those publishes were a fifth of the draining
worker process's CPU, taken from the actors under the same interpreter lock. The drainer holds a
whole chunk, so :class:`ChunkedAmqpPublish` publishes it on a channel of its own and flushes once,
and with confirms waits once for all of the chunk's confirms: 49 and 72 µs per message (0.19 ms
of wall time with confirms), in chunks of 40.

What each message gets is what ``enqueue`` gives it: the queue declared first (``declare_queue``),
the middleware's enqueue hooks (:class:`.enqueue_hooks.EnqueueHooks`), a persistent publish to the
queue with the message's ``broker_priority``, ``mandatory`` when the broker confirms. With
confirms, a message the broker nacks or returns (unroutable: its queue was deleted) fails alone,
as ``enqueue`` would have raised for it. A lost connection or channel is retried as ``enqueue``
retries it, on a new connection, up to three attempts in all; the messages not yet confirmed
are published again, so one may reach the broker twice (at least once, as the drainer promises;
the copy keeps its message id). Only undelayed messages (the drainer's).

It drives pika's ``BlockingChannel`` through two of its internals, ``_impl`` (the asynchronous
channel underneath) and ``_flush_output`` (run the I/O loop until flushed and a condition holds),
both there since pika 1.0; :func:`chunked_publish_for` returns None for a pika without them and
the publisher then enqueues message by message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.errors import ConnectionClosed

from .enqueue_hooks import EnqueueHooks

__all__ = ["ChunkedAmqpPublish", "chunked_publish_for"]

logger = logging.getLogger(__name__)

#: Publish attempts per chunk, the first included, as ``RabbitmqBroker.enqueue`` makes.
MAX_ATTEMPTS = 3


class _Confirms:
    """The broker's confirms for the publishes of one channel in confirm mode.

    Delivery tags count the channel's publishes from 1. For the chunk being published, ``pending``
    maps its tags to the messages' indexes in the chunk; a confirmed index goes to ``confirmed``,
    a refused one to ``failed`` with its error.
    """

    def __init__(self) -> None:
        self.selected = False
        self.next_tag = 1
        self.pending: dict[int, int] = {}
        self.confirmed: set[int] = set()
        self.failed: dict[int, BaseException] = {}
        #: The chunk's bodies by index, read only to place a returned (unroutable) message.
        self.bodies: dict[int, bytes] = {}

    def start(self, bodies: dict[int, bytes], confirmed: set[int], failed: dict[int, BaseException]) -> None:
        self.pending, self.bodies, self.confirmed, self.failed = {}, bodies, confirmed, failed

    def on_select_ok(self, frame: Any) -> None:
        self.selected = True

    def on_ack_or_nack(self, frame: Any) -> None:
        import pika

        method = frame.method
        last = method.delivery_tag
        tags = [tag for tag in self.pending if tag <= last] if method.multiple else [last]
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            index = self.pending.pop(tag, None)
            if index is None:
                continue
            if nacked:
                self.failed[index] = pika.exceptions.NackError([])
            self.confirmed.add(index)

    def on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # Sent before the publish's ack: the message reached no queue.
        import pika

        for index, sent in self.bodies.items():
            if sent == body and index not in self.failed:
                returned = pika.adapters.blocking_connection.ReturnedMessage(method, properties, body)
                self.failed[index] = pika.exceptions.UnroutableError([returned])
                return

    def settled(self) -> bool:
        return not self.pending


class ChunkedAmqpPublish:
    """``RabbitmqBroker.enqueue`` for many messages at once, on the calling thread's connection.

    Call it on the threads that own the broker's per-thread connections (a
    :class:`~dramatiq_mollifier.drain.publisher.SharedPublisher`'s): each gets a channel of its
    own on that connection. One result per message, in order: None when the broker has it (with
    confirms: confirmed), else the exception that kept it off the broker.
    """

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        self._hooks = EnqueueHooks(broker)
        self._local = threading.local()

    def __call__(self, messages: Sequence[dramatiq.Message[Any]]) -> list[BaseException | None]:
        import pika

        results: list[BaseException | None] = [None] * len(messages)
        hooks = self._hooks
        hooks.refresh()
        ready: list[int] = []
        for index, message in enumerate(messages):
            try:
                hooks.before(message)
            except Exception as exc:
                results[index] = exc
            else:
                ready.append(index)
        bodies = {index: messages[index].encode() for index in ready}
        # Filled as the broker answers (with confirms): across attempts, so a retry publishes
        # only what the broker has not confirmed yet.
        confirmed: set[int] = set()
        failed: dict[int, BaseException] = {}
        lost: BaseException | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                self._publish(messages, [i for i in ready if i not in confirmed], bodies, confirmed, failed)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as exc:
                # As enqueue does: drop the connection (and this channel on it), try a new one.
                self._local.channel = None
                del self._broker.connection
                lost = exc
                logger.debug("mollifier.drainer: chunk publish attempt %d failed: %r", attempt, exc)
            except ConnectionClosed as exc:
                # declare_queue's own attempts are spent: the broker cannot be reached.
                lost = exc
                break
            else:
                lost = None
                break
        for index in ready:
            error = failed.get(index)
            if error is None and lost is not None and index not in confirmed:
                error = lost
            if error is None:
                hooks.after(messages[index])
            else:
                results[index] = error
        return results

    def _publish(
        self,
        messages: Sequence[dramatiq.Message[Any]],
        indexes: list[int],
        bodies: dict[int, bytes],
        confirmed: set[int],
        failed: dict[int, BaseException],
    ) -> None:
        """Publish ``indexes`` and wait until flushed (with confirms: until each is confirmed)."""
        import pika

        broker = self._broker
        for queue_name in {messages[index].queue_name for index in indexes}:
            broker.declare_queue(queue_name, ensure=True)
        channel, confirms = self._channel()
        impl = channel._impl
        if confirms is not None:
            confirms.start(bodies, confirmed, failed)
        for index in indexes:
            message = messages[index]
            priority = message.options.get("broker_priority")
            impl.basic_publish(
                exchange="",
                routing_key=message.queue_name,
                body=bodies[index],
                properties=pika.BasicProperties(delivery_mode=2, priority=priority),
                mandatory=confirms is not None,
            )
            if confirms is not None:
                confirms.pending[confirms.next_tag] = index
                confirms.next_tag += 1
        if confirms is None:
            channel._flush_output()
            return
        channel._flush_output(confirms.settled)
        if confirms.pending:  # the wait ended on a closed channel
            raise pika.exceptions.ChannelClosed(0, "the channel closed before the chunk was confirmed")

    def _channel(self) -> tuple[Any, _Confirms | None]:
        """This thread's channel (opened on first use, again after a failure) and its confirms."""
        channel = getattr(self._local, "channel", None)
        if channel is not None and channel.is_open:
            return channel, self._local.confirms
        channel = self._broker.connection.channel()
        confirms = None
        if self._broker.confirm_delivery:
            confirms = _Confirms()
            channel._impl.confirm_delivery(
                ack_nack_callback=confirms.on_ack_or_nack, callback=confirms.on_select_ok
            )
            channel._impl.add_on_return_callback(confirms.on_return)
            channel._flush_output(lambda: confirms.selected)
        self._local.channel, self._local.confirms = channel, confirms
        return channel, confirms


def chunked_publish_for(broker: dramatiq.Broker) -> ChunkedAmqpPublish | None:
    """A :class:`ChunkedAmqpPublish` for a ``RabbitmqBroker`` whose pika has what it drives."""
    from pika.adapters.blocking_connection import BlockingChannel

    if not all(hasattr(BlockingChannel, name) for name in ("_flush_output", "is_open", "is_closed")):
        logger.info("mollifier.drainer publishes message by message: this pika lacks what it drives")
        return None
    return ChunkedAmqpPublish(broker)
