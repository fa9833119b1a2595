"""The floor of ``bench_smoothing.py --floor``: the cheapest store-and-forward through Redis.

Producers ``RPUSH`` each burst message's encoded body to one list; a thread in each worker process
``LPOP``s up to :data:`CHUNK` at a time and writes them to the broker with the package's chunk
writers (a confirmed chunk on RabbitMQ, one pipelined script call on a RedisBroker). No gate, no
pace, no lease, no ack, no fairness, no metrics: it loses what a crash holds and lets the burst
back into the broker at full speed, so it is no design.

On RabbitMQ it is a lower bound: every buffer in Redis must take each message in and out of Redis
and publish it, as the floor does, so where the floor itself completes the burst more than 1.1x
slower than the run without a buffer, no buffer in Redis meets the completion goal on that
machine. On a RedisBroker it is only a reference: the mollifier moves its chunks inside Redis
(``dramatiq_mollifier/drain/redis_move.py``), without the round trip through Python the floor
makes, so it can be cheaper than the floor there.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import dramatiq
import redis

from dramatiq_mollifier.drain.amqp_chunks import chunked_publish_for
from dramatiq_mollifier.drain.batch_enqueue import pipelined_enqueue_for

__all__ = ["CHUNK", "DRAINED_KEY", "LIST_KEY", "FloorDrain", "floor_send"]

logger = logging.getLogger(__name__)

#: The list the floor's producers push to and its drainers pop from.
LIST_KEY = "smoothing:floor"
#: How many messages the floor's drainers popped, counted before each chunk's write (so before
#: any of it can start): what shows the burst went through the list.
DRAINED_KEY = "smoothing:floor-drained"
#: Messages per pop and per broker write (the mollifier's paced claims granted about 40 on
#: RabbitMQ).
CHUNK = 40


def floor_send(client: redis.Redis, message: dramatiq.Message[Any]) -> None:
    """The floor's ``send()``: one ``RPUSH`` of the encoded message."""
    client.rpush(LIST_KEY, message.encode())


class FloorDrain(dramatiq.Middleware):
    """Starts the floor's drain thread in each worker process."""

    def __init__(self, *, redis_url: str, rabbitmq: bool) -> None:
        self._redis_url = redis_url
        self._rabbitmq = rabbitmq

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        threading.Thread(target=self._run, args=(broker,), name="floor-drain", daemon=True).start()

    def _run(self, broker: dramatiq.Broker) -> None:
        write = chunked_publish_for(broker) if self._rabbitmq else pipelined_enqueue_for(broker)
        if write is None:
            logger.error("floor-drain: this broker has no chunk writer; the burst stays in %s", LIST_KEY)
            return
        client = redis.Redis.from_url(self._redis_url)
        while True:
            try:
                bodies = client.lpop(LIST_KEY, CHUNK)
                if not bodies:
                    time.sleep(0.002)
                    continue
                client.incrby(DRAINED_KEY, len(bodies))
                errors = [error for error in write([dramatiq.Message.decode(b) for b in bodies]) if error]
            except Exception:  # the run times out on what is lost: say why in the worker's log
                logger.exception("floor-drain: a chunk failed")
                continue
            if errors:
                logger.error("floor-drain: %d of %d not written: %r", len(errors), len(bodies), errors[0])
