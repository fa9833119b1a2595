"""Drained messages onto a ``RabbitmqBroker`` a chunk at a time: one flush, one wait for confirms.

``RabbitmqBroker.enqueue`` publishes through pika's ``BlockingChannel``, which runs its I/O loop
until the socket is flushed after every message and, with publisher confirms, until the broker has
confirmed that message before the next is sent. Measured on a loopback node (pika 1.4, CPU of the
publishing thread, ``bench_amqp_publish.py``): 140 to 153 µs per message without confirms; with
them 325 µs and a round trip each (about 1 ms of wall time). In ``bench_smoothing.py`` those
publishes were a fifth of the draining worker process's CPU, taken from the actors under the same
interpreter lock. The drainer holds a whole chunk, so :class:`ChunkedAmqpPublish` publishes it on
a channel of its own, flushes once (its frames joined into sends of up to 64 KiB) and waits once for
all of the chunk's confirms: about 55 µs of CPU and 0.2 ms of wall time per message in chunks of 40.

Its channel confirms whatever the broker's ``confirm_delivery``: the drainer acks a buffered entry
once its message is published, and in ``divert`` mode the buffer held the only copy, so a publish
the broker never confirmed must not count. Confirms also tell which message the broker refused
(nacked, returned unroutable, or closed the channel over, such as one over its
``max_message_size``), where an unconfirmed channel would look open while everything written
after such a message vanished.

Each message gets what ``enqueue`` gives it: its queue declared (``declare_queue``), the
middleware's enqueue hooks (:class:`.enqueue_hooks.EnqueueHooks`), a persistent publish with the
message's ``broker_priority``, ``mandatory`` when the broker confirms. Whatever the chunk does not
settle (a message the broker nacks or returns, one pika refuses to encode, the rest of the chunk
when the channel or the connection is lost) goes again, message by message, through
``broker.enqueue``: it declares a deleted queue again, retries on a new connection and raises its
own errors, so each such message ends as it would have without the chunk (``enqueue`` calls the
``before_enqueue`` hooks again, as it does on each of its own retries); once ``enqueue`` fails as
the broker being unavailable, the rest of the chunk gets its error without waiting as long each.
A message that had reached the broker unconfirmed when its channel was lost may be there twice:
at least once, as the drainer promises, the copy keeping its message id. Only undelayed messages
(the drainer's).

It drives pika's ``BlockingChannel`` through two of its internals, ``_impl`` (the asynchronous
channel underneath) and ``_flush_output`` (run the I/O loop until flushed and a condition holds),
both there since pika 1.0; :func:`chunked_publish_for` returns None for a pika without them and
the publisher then enqueues message by message.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

import dramatiq

from .enqueue_hooks import EnqueueHooks
from .failures import is_unavailable

__all__ = ["JOINED_BYTES", "ChunkedAmqpPublish", "chunked_publish_for"]

logger = logging.getLogger(__name__)

#: The most a chunk's frames are joined into, in bytes, for one socket send.
JOINED_BYTES = 65_536


class _Confirms:
    """The broker's confirms for the publishes of one channel in confirm mode.

    Delivery tags count the channel's publishes from 1. For the chunk being published,
    ``pending`` maps its tags to the messages' indexes in the chunk; a confirmed index goes to
    ``confirmed``, a nacked or returned one to ``refused``.
    """

    def __init__(self) -> None:
        self.selected = False
        self.next_tag = 1
        self.start()

    def start(self) -> None:
        """Forget the last chunk (the tags keep counting: they are the channel's)."""
        self.pending: dict[int, int] = {}
        self.confirmed: set[int] = set()
        self.refused: set[int] = set()
        #: The pending messages' bodies, read only to place a returned (unroutable) message.
        self.bodies: dict[int, bytes] = {}

    def sent(self, index: int, body: bytes) -> None:
        self.pending[self.next_tag] = index
        self.bodies[index] = body
        self.next_tag += 1

    def accepted(self) -> set[int]:
        return self.confirmed - self.refused

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
            self.confirmed.add(index)
            if nacked:
                self.refused.add(index)

    def on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # Sent before the publish's ack: the message reached no queue. Its index is found by its
        # body (unique: it holds the message id) among those still pending.
        for index in self.pending.values():
            if self.bodies.get(index) == body:
                self.refused.add(index)
                return

    def settled(self) -> bool:
        return not self.pending


class ChunkedAmqpPublish:
    """``RabbitmqBroker.enqueue`` for many messages at once, on the calling thread's connection.

    Call it on the threads that own the broker's per-thread connections (a
    :class:`~dramatiq_mollifier.drain.publisher.SharedPublisher`'s): each gets a channel of its
    own on that connection. One result per message, in order: None when the broker confirmed it
    (or ``enqueue``, sending it again, returned), else the exception that kept it off the broker.
    """

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        self._hooks = EnqueueHooks(broker)
        self._local = threading.local()

    def __call__(self, messages: Sequence[dramatiq.Message[Any]]) -> list[BaseException | None]:
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
        settled = self._publish(messages, ready) if ready else set()
        unreachable: BaseException | None = None
        for index in ready:
            if index in settled:
                hooks.after(messages[index])
            elif unreachable is not None:
                # enqueue spent its attempts on the broker: the rest would only wait as long
                results[index] = unreachable
            else:
                try:
                    self._broker.enqueue(messages[index])
                except Exception as exc:
                    results[index] = exc
                    if is_unavailable(exc):
                        unreachable = exc
        return results

    def _publish(self, messages: Sequence[dramatiq.Message[Any]], ready: list[int]) -> set[int]:
        """Publish ``ready`` with one flush and one wait for the confirms; the indexes the broker
        confirmed."""
        import pika

        try:
            for queue_name in {messages[index].queue_name for index in ready}:
                self._broker.declare_queue(queue_name, ensure=True)
            channel, confirms = self._channel()
        except Exception as exc:
            logger.debug("mollifier.drainer: no channel for a chunk (%r), publishing one by one", exc)
            return set()
        impl = channel._impl
        mandatory = bool(self._broker.confirm_delivery)  # as enqueue publishes
        confirms.start()
        for index in ready:
            message = messages[index]
            try:
                body = message.encode()
                impl.basic_publish(
                    exchange="",
                    routing_key=message.queue_name,
                    body=body,
                    properties=pika.BasicProperties(
                        delivery_mode=2, priority=message.options.get("broker_priority")
                    ),
                    mandatory=mandatory,
                )
            except Exception:  # one pika cannot encode, a channel closed under us: enqueue decides
                continue
            confirms.sent(index, body)
        _coalesce_writes(impl)
        try:
            channel._flush_output(confirms.settled)
        except Exception as exc:
            logger.debug("mollifier.drainer: a chunk's channel failed (%r), the rest one by one", exc)
            self._local.channel = None
            if isinstance(exc, pika.exceptions.AMQPConnectionError):
                del self._broker.connection  # as enqueue does: the next use opens a new one
            elif channel.is_open:
                with contextlib.suppress(Exception):
                    channel.close()
        return confirms.accepted()

    def _channel(self) -> tuple[Any, _Confirms]:
        """This thread's channel (opened on first use, again after a failure), in confirm mode."""
        channel = getattr(self._local, "channel", None)
        if channel is not None and channel.is_open:
            return channel, self._local.confirms
        channel = self._broker.connection.channel()
        confirms = _Confirms()
        channel._impl.confirm_delivery(
            ack_nack_callback=confirms.on_ack_or_nack, callback=confirms.on_select_ok
        )
        channel._impl.add_on_return_callback(confirms.on_return)
        channel._flush_output(lambda: confirms.selected)
        self._local.channel, self._local.confirms = channel, confirms
        return channel, confirms


def _coalesce_writes(channel_impl: Any) -> None:
    """Join the frames queued on the channel's transport into buffers of up to
    :data:`JOINED_BYTES`.

    pika queues each frame (three per message: method, header, body) as a buffer of its own and
    sends them one ``send()`` each; a chunk of 40 cost 120 system calls, and RabbitMQ as many
    reads. Joined, a chunk of small messages leaves in one call. The bound keeps what pika
    copies on a partial send small (it requeues the rest of the buffer as a new one): a TLS
    socket takes one record of 16 KiB per call. Left alone when this pika's transport keeps its
    buffers elsewhere.
    """
    transport = getattr(getattr(channel_impl, "connection", None), "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    if not isinstance(buffers, collections.deque) or len(buffers) < 2:
        return
    joined: list[bytes] = []
    piece: list[bytes] = []
    size = 0
    for frame in buffers:
        if piece and size + len(frame) > JOINED_BYTES:
            joined.append(b"".join(piece))
            piece, size = [], 0
        piece.append(frame)
        size += len(frame)
    joined.append(b"".join(piece))
    buffers.clear()
    buffers.extend(joined)


def chunked_publish_for(broker: dramatiq.Broker) -> ChunkedAmqpPublish | None:
    """A :class:`ChunkedAmqpPublish` for a ``RabbitmqBroker`` whose pika has what it drives."""
    from pika.adapters.blocking_connection import BlockingChannel

    if not all(hasattr(BlockingChannel, name) for name in ("_flush_output", "is_open", "is_closed")):
        logger.info("mollifier.drainer publishes message by message: this pika lacks what it drives")
        return None
    return ChunkedAmqpPublish(broker)
