"""The Dramatiq app of the smoothing scenario (``bench_smoothing.py`` and its test).

Configured from the environment: ``SMOOTHING_BROKER`` (``redis`` or ``rabbitmq``),
``SMOOTHING_BROKER_URL``, ``SMOOTHING_REDIS_URL`` (where the waits are recorded),
``SMOOTHING_WORK_MS`` (how long the actor sleeps: I/O-bound work), ``SMOOTHING_FLOOR`` (``1``: the
burst goes through ``floor_drain.py``, the cheapest store-and-forward through Redis) and
``MOLLIFIER_*``. The actor records ``org|wait_ms|started_at_ms`` for every message, where the wait
runs from the send to the start of processing: what a tenant feels. Each worker process reports
its threads' CPU by role (``benchmarks/thread_cpu.py``).
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis

from benchmarks.floor_drain import FloorDrain
from benchmarks.thread_cpu import ThreadCpuReporter
from dramatiq_mollifier import Mollifier

QUEUE_NAME = "smoothing"
WAITS_KEY = "smoothing:waits"
BURST_DONE_KEY = "smoothing:burst-done"

RABBITMQ = os.environ.get("SMOOTHING_BROKER", "redis") == "rabbitmq"
FLOOR = os.environ.get("SMOOTHING_FLOOR") == "1"

if RABBITMQ:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(url=os.environ["SMOOTHING_BROKER_URL"])
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=os.environ["SMOOTHING_BROKER_URL"])
waits = redis.Redis.from_url(os.environ["SMOOTHING_REDIS_URL"])
broker.add_middleware(ThreadCpuReporter(waits))
broker.add_middleware(Mollifier())
if FLOOR:
    broker.add_middleware(FloorDrain(redis_url=os.environ["SMOOTHING_REDIS_URL"], rabbitmq=RABBITMQ))
dramatiq.set_broker(broker)

_work_s = int(os.environ.get("SMOOTHING_WORK_MS", "5")) / 1000


@dramatiq.actor(queue_name=QUEUE_NAME, max_retries=0)
def work(org: str, sent_at_ms: float) -> None:
    started_ms = time.time() * 1000
    pipe = waits.pipeline(transaction=False)
    pipe.rpush(WAITS_KEY, f"{org}|{started_ms - sent_at_ms:.1f}|{started_ms:.0f}")
    if org == "burst":
        pipe.incr(BURST_DONE_KEY)
    pipe.execute()
    time.sleep(_work_s)
