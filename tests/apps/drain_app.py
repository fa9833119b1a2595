"""A Dramatiq app with the Mollifier on a RedisBroker, for the drainer's end-to-end tests.

Configured from the environment, as a deployment would be:

- ``E2E_REDIS_URL``: the Redis of the broker and of the processed-ids list (a single server).
- ``E2E_REDELIVERY_SLEEP_MS``: how long each re-enqueue of a drained message takes (a slow
  broker), so that a test can signal the worker while it is draining. Defaults to 0.
- ``E2E_HEARTBEAT_TIMEOUT_MS``: the RedisBroker's heartbeat timeout, after which the messages of
  a killed worker are redelivered. Defaults to 2 seconds.
- ``MOLLIFIER_*``: the mollifier's settings.

The actor appends the id of each message it processes to the list ``e2e:processed``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware

from dramatiq_mollifier import Mollifier
from dramatiq_mollifier.models import STATE_DRAINED, STATE_OPTION

QUEUE_NAME = "e2e"
PROCESSED_KEY = "e2e:processed"


class SlowRedelivery(Middleware):
    """Makes every re-enqueue of a drained message take ``sleep_ms``."""

    def __init__(self, sleep_ms: int) -> None:
        self.sleep_s = sleep_ms / 1000

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        if message.options.get(STATE_OPTION) == STATE_DRAINED:
            time.sleep(self.sleep_s)


REDIS_URL = os.environ["E2E_REDIS_URL"]
broker = RedisBroker(
    url=REDIS_URL,
    heartbeat_timeout=int(os.environ.get("E2E_HEARTBEAT_TIMEOUT_MS", "2000")),
    # Maintenance (which redelivers a dead worker's messages) on every command, not one in 1,000.
    maintenance_chance=1_000_000,
)
broker.add_middleware(CurrentMessage())
sleep_ms = int(os.environ.get("E2E_REDELIVERY_SLEEP_MS", "0"))
if sleep_ms:
    broker.add_middleware(SlowRedelivery(sleep_ms))
broker.add_middleware(Mollifier())
dramatiq.set_broker(broker)

_results = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(queue_name=QUEUE_NAME, max_retries=0)
def record(n: int) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    _results.rpush(PROCESSED_KEY, message.message_id)
