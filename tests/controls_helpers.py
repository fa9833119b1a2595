"""A Dramatiq app for the operator-control tests: a RedisBroker, an actor that records what it
processed, a real worker, and buffered messages seeded for it."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer

QUEUE = "work"


class App:
    """A RedisBroker with an actor that records (org, message id) of each message it processes."""

    def __init__(self, redis_url: str) -> None:
        self.broker = RedisBroker(url=redis_url)
        self.broker.add_middleware(CurrentMessage())
        self.processed: list[tuple[str, str]] = []
        self._lock = threading.Lock()

        def record(n: int) -> None:
            message = CurrentMessage.get_current_message()
            assert message is not None
            with self._lock:
                self.processed.append((message.options["org_id"], message.message_id))

        self.actor = dramatiq.actor(record, actor_name="record", queue_name=QUEUE, broker=self.broker)
        self.worker: dramatiq.Worker | None = None

    def message(self, org: str, env: str = "prod") -> dramatiq.Message[Any]:
        return self.actor.message_with_options(args=(0,), org_id=org, env_id=env)

    def add_draining_mollifier(self, redis_url: str, key_prefix: str, client: redis.Redis) -> Mollifier:
        """A Mollifier that drains in this app's worker, as deployed; every org enrolled, a
        threshold no test reaches."""
        settings = MollifierSettings(
            enabled=True,
            enabled_orgs={"*"},
            redis_url=redis_url,
            key_prefix=key_prefix,
            drain_poll_interval_ms=20,
            trip_threshold=1_000,
        )
        mollifier = Mollifier(settings, client=client)
        self.broker.add_middleware(mollifier)
        return mollifier

    def start_worker(self, threads: int = 4) -> None:
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=50)
        self.worker.start()

    def orgs(self) -> Counter[str]:
        with self._lock:
            return Counter(org for org, _ in self.processed)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.broker.close()


def seed(buffer: MollifierBuffer, app: App, org: str, count: int, env: str = "prod") -> list[str]:
    ids = []
    for _ in range(count):
        message = app.message(org, env)
        assert buffer.accept(message.message_id, org_id=org, env_id=env, payload=message.encode())
        ids.append(message.message_id)
    return ids
