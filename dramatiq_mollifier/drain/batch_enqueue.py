"""Drained messages onto a ``RedisBroker`` in one script call per chunk, not one per message.

``RedisBroker.enqueue`` runs its dispatch script once per message: a round trip whose client
side (packing, a pooled connection, the reply's parsing, a switch of the interpreter lock while
the thread waits) was the largest part of a drained message's CPU cost in the worker process
that drains, about a fifth of that process's busy time in ``bench_smoothing.py``, and whose
server side (a script call, the heartbeat, the script's set-up) came on top of the Redis work a
drained message already costs. The drainer has a whole chunk of messages at hand, so
:class:`PipelinedRedisEnqueue` does what ``RedisBroker.enqueue`` does for each of them (a fresh
``redis_message_id``, the middleware's ``before_enqueue`` and ``after_enqueue``) and writes them
with ``lua/enqueue_batch.lua``: what dispatch.lua's enqueue writes (the heartbeat, the queue's
hash and list), once per queue of the chunk, the calls in one pipeline.

Per message it does no more than it must: the messages it is given are the caller's own copies
(the drain handler decodes each entry afresh), so each gets its ``redis_message_id`` in place
rather than in one more copy, and the enqueue hooks go only to the middleware that define them
(:class:`.enqueue_hooks.EnqueueHooks`).

It reads the broker's ``client``, ``namespace`` and ``broker_id`` as Dramatiq 2 defines them, and
needs its dispatch script (the keys it writes are that script's); :func:`pipelined_enqueue_for`
returns None for a broker that lacks any of them (another broker, another Dramatiq), and the
drainer then enqueues message by message as before.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import dramatiq
import redis
from dramatiq.common import current_millis

from .enqueue_hooks import EnqueueHooks

__all__ = ["EnqueueMany", "PipelinedRedisEnqueue", "pipelined_enqueue_for"]

logger = logging.getLogger(__name__)

#: Enqueues messages; one result per message, in order: None when it reached the broker, else
#: the exception that kept it from the broker (the message was not written).
EnqueueMany = Callable[[Sequence[dramatiq.Message[Any]]], list[BaseException | None]]

_NEEDED = ("client", "scripts", "namespace", "broker_id")


class PipelinedRedisEnqueue:
    """``RedisBroker.enqueue`` for many messages at once: one script call per queue of the chunk,
    the calls in one pipelined round trip.

    A message whose ``before_enqueue`` raises a ``MiddlewareError`` is not written and gets that
    exception (any other exception of a hook is logged, as ``Broker.emit_before`` does); a
    failure of the round trip itself (the broker unreachable) is every message's. Only undelayed
    messages (the drainer's): a delay goes through ``broker.enqueue``. The messages are taken
    over: each gets its fresh ``redis_message_id`` in its own options.
    """

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        source = resources.files(__package__).joinpath("lua/enqueue_batch.lua").read_text(encoding="utf-8")
        self._script = broker.client.register_script(source)
        self._heartbeats = f"{broker.namespace}:__heartbeats__"
        self._hooks = EnqueueHooks(broker)

    def __call__(self, messages: Sequence[dramatiq.Message[Any]]) -> list[BaseException | None]:
        broker = self._broker
        results: list[BaseException | None] = [None] * len(messages)
        hooks = self._hooks
        hooks.refresh()
        # Queue name -> (index, message, its redis message id) in the chunk's order.
        queues: dict[str, list[tuple[int, dramatiq.Message[Any], str]]] = {}
        for index, message in enumerate(messages):
            redis_message_id = str(uuid.uuid4())
            message.options["redis_message_id"] = redis_message_id
            try:
                hooks.before(message)
            except Exception as exc:
                results[index] = exc
                continue
            queues.setdefault(message.queue_name, []).append((index, message, redis_message_id))
        if not queues:
            return results
        pipe = broker.client.pipeline(transaction=False)
        now_ms = current_millis()
        calls: list[tuple[list[tuple[int, dramatiq.Message[Any], str]], tuple[str, ...], list[Any]]] = []
        for queue_name, ready in queues.items():
            queue = f"{broker.namespace}:{queue_name}"
            keys: tuple[str, ...] = (self._heartbeats, queue, f"{queue}.msgs")
            args: list[Any] = [now_ms, broker.broker_id]
            for _, message, redis_message_id in ready:
                args += (redis_message_id, message.encode())
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            calls.append((ready, keys, args))
        try:
            replies = pipe.execute(raise_on_error=False)
        except Exception as exc:
            for ready in queues.values():
                for index, _, _ in ready:
                    results[index] = exc
            return results
        for (ready, keys, args), reply in zip(calls, replies, strict=True):
            outcome = reply
            if isinstance(reply, redis.exceptions.NoScriptError):
                # A restarted server forgot the script: the script object loads it again.
                try:
                    outcome = self._script(keys=keys, args=args)
                except Exception as exc:
                    outcome = exc
            for index, message, _ in ready:
                if isinstance(outcome, Exception):
                    results[index] = outcome
                else:
                    hooks.after(message)
        return results


def pipelined_enqueue_for(broker: dramatiq.Broker) -> EnqueueMany | None:
    """A :class:`PipelinedRedisEnqueue` for a ``RedisBroker`` that has what it reads; else None."""
    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:  # pragma: no cover - redis comes with dramatiq[redis]
        return None
    if not isinstance(broker, RedisBroker):
        return None
    if not all(hasattr(broker, name) for name in _NEEDED) or "dispatch" not in getattr(broker, "scripts", {}):
        logger.info("mollifier.drainer enqueues message by message: this RedisBroker lacks a dispatch script")
        return None
    return PipelinedRedisEnqueue(broker)
