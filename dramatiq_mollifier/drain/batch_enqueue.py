"""Drained messages onto a ``RedisBroker`` in one round trip per batch, not one per message.

``RedisBroker.enqueue`` runs its dispatch script once per message: a round trip whose client
side (packing, a pooled connection, the reply's parsing, a switch of the interpreter lock while
the thread waits) was the largest part of a drained message's CPU cost in the worker process
that drains, about a fifth of that process's busy time in ``bench_smoothing.py``. The drainer
has a whole batch of messages at hand, so :class:`PipelinedRedisEnqueue` does what
``RedisBroker.enqueue`` does for each of them (a fresh ``redis_message_id``, the middleware's
``before_enqueue`` and ``after_enqueue``, the same dispatch script with the same arguments) but
sends the script calls in one pipeline.

It reads the broker's dispatch arguments (``scripts``, ``namespace``, ``broker_id``,
``heartbeat_timeout``, ``dead_message_ttl`` and the two per-call helpers) as Dramatiq 2 defines
them; :func:`pipelined_enqueue_for` returns None for a broker that lacks any of them (another
broker, another Dramatiq), and the drainer then enqueues message by message as before.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.common import current_millis

__all__ = ["EnqueueMany", "PipelinedRedisEnqueue", "pipelined_enqueue_for"]

logger = logging.getLogger(__name__)

#: Enqueues messages; one result per message, in order: None when it reached the broker, else
#: the exception that kept it from the broker (the message was not written).
EnqueueMany = Callable[[Sequence[dramatiq.Message[Any]]], list[BaseException | None]]

_NEEDED = ("client", "scripts", "namespace", "broker_id", "heartbeat_timeout", "dead_message_ttl")
_HELPERS = ("_should_do_maintenance", "_max_unpack_size")


class PipelinedRedisEnqueue:
    """``RedisBroker.enqueue`` for many messages at once, with one pipelined round trip.

    A message whose ``before_enqueue`` raises is not written and gets that exception; a failure
    of the round trip itself (the broker unreachable) is every message's. Only undelayed messages
    (the drainer's): a delay goes through ``broker.enqueue``.
    """

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        self._script = broker.scripts["dispatch"]
        self._keys = [broker.namespace]

    def __call__(self, messages: Sequence[dramatiq.Message[Any]]) -> list[BaseException | None]:
        broker = self._broker
        results: list[BaseException | None] = [None] * len(messages)
        ready: list[tuple[int, dramatiq.Message[Any], list[Any]]] = []
        for index, sent in enumerate(messages):
            message = sent.copy(options={"redis_message_id": str(uuid.uuid4())})
            try:
                broker.emit_before("enqueue", message, None)
            except Exception as exc:
                results[index] = exc
                continue
            args = [
                "enqueue",
                current_millis(),
                message.queue_name,
                broker.broker_id,
                broker.heartbeat_timeout,
                broker.dead_message_ttl,
                broker._should_do_maintenance("enqueue"),
                broker._max_unpack_size(),
                message.options["redis_message_id"],
                message.encode(),
            ]
            ready.append((index, message, args))
        if not ready:
            return results
        pipe = broker.client.pipeline(transaction=False)
        for _, _, args in ready:
            pipe.evalsha(self._script.sha, 1, *self._keys, *args)
        try:
            replies = pipe.execute(raise_on_error=False)
        except Exception as exc:
            for index, _, _ in ready:
                results[index] = exc
            return results
        for (index, message, args), reply in zip(ready, replies, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                # A restarted server forgot the script: the script object loads it again.
                try:
                    self._script(keys=self._keys, args=args)
                except Exception as exc:
                    results[index] = exc
                    continue
            elif isinstance(reply, Exception):
                results[index] = reply
                continue
            broker.emit_after("enqueue", message, None)
        return results


def pipelined_enqueue_for(broker: dramatiq.Broker) -> EnqueueMany | None:
    """A :class:`PipelinedRedisEnqueue` for a ``RedisBroker`` that has what it reads; else None."""
    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:  # pragma: no cover - redis comes with dramatiq[redis]
        return None
    if not isinstance(broker, RedisBroker):
        return None
    if not all(hasattr(broker, name) for name in (*_NEEDED, *_HELPERS)) or "dispatch" not in getattr(
        broker, "scripts", {}
    ):
        logger.info("mollifier.drainer enqueues message by message: this RedisBroker lacks a dispatch script")
        return None
    return PipelinedRedisEnqueue(broker)
