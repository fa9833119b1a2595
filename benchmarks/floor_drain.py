"""The floor of ``bench_smoothing.py --floor``: the cheapest store-and-forward through Redis.

Producers ``RPUSH`` each burst message's encoded body to one list; a thread in each worker process
``LPOP``s up to :data:`CHUNK` at a time and writes them to the broker with the package's own
fastest writers (a confirmed chunk on RabbitMQ, one pipelined script call on a RedisBroker). No
gate, no pace, no lease, no ack, no fairness, no metrics: it loses what a crash holds and lets the
burst back into the broker at full speed, so it is no design. It is a lower bound: what moving a
burst through any buffer in Redis costs a machine, which the mollifier cannot undercut. Where
the floor itself completes the burst more than 1.1x slower than the run without a buffer, the
completion goal is out of reach on that machine for any Redis buffer.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import redis

from dramatiq_mollifier.drain.amqp_chunks import ChunkedAmqpPublish
from dramatiq_mollifier.drain.batch_enqueue import PipelinedRedisEnqueue

__all__ = ["CHUNK", "DRAINED_KEY", "LIST_KEY", "FloorDrain", "floor_send"]

#: The list the floor's producers push to and its drainers pop from.
LIST_KEY = "smoothing:floor"
#: How many messages the floor's drainers popped, counted before each chunk's write (so before
#: any of it can start): what shows the burst went through the list.
DRAINED_KEY = "smoothing:floor-drained"
#: Messages per pop and per broker write (the mollifier's claims averaged about 40 on RabbitMQ).
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
        write = ChunkedAmqpPublish(broker) if self._rabbitmq else PipelinedRedisEnqueue(broker)
        client = redis.Redis.from_url(self._redis_url)
        while True:
            bodies = client.lpop(LIST_KEY, CHUNK)
            if not bodies:
                time.sleep(0.002)
                continue
            client.incrby(DRAINED_KEY, len(bodies))
            write([dramatiq.Message.decode(body) for body in bodies])
