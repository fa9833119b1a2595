"""The demo's Dramatiq app: a Redis broker with the mollifier and one actor that records its runs.

The demo's worker is the real ``dramatiq`` command on this module::

    DRAMATIQ_MOLLIFIER_DEMO='{...}' dramatiq dramatiq_mollifier.demo.app:setup_worker

``setup_worker`` reads its :class:`DemoConfig` from the ``DRAMATIQ_MOLLIFIER_DEMO`` variable (JSON)
when ``dramatiq`` calls it in each worker process; importing the module does nothing.

Every key the demo writes lives under ``mollifier-demo:<run id>:``, so a run on a shared server
(``--redis-url``) touches nothing else and can be cleaned up afterwards.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ..middleware import Mollifier
from ..models import STATE_DRAINED, STATE_OPTION
from ..settings import MollifierMode, MollifierSettings, default_of

__all__ = ["CONFIG_VARIABLE", "ACTOR_NAME", "DemoConfig", "DemoKeys", "build_broker", "setup_worker"]

#: The environment variable that carries the JSON :class:`DemoConfig` to the worker processes.
CONFIG_VARIABLE = "DRAMATIQ_MOLLIFIER_DEMO"
#: The demo's one actor.
ACTOR_NAME = "handle_event"

# Drained-enqueue times are written in batches so the drainer does not pay a round trip each.
_FLUSH_EVERY = 200
_FLUSH_INTERVAL_MS = 250


def now_ms() -> float:
    """Wall-clock milliseconds: producer and worker run on one machine and share this clock."""
    return time.time() * 1000


@dataclass(frozen=True)
class DemoConfig:
    """What the producer and the worker processes must agree on."""

    redis_url: str
    run_id: str
    #: Simulated work per message (a database write), in milliseconds.
    work_ms: float = 2.0
    #: The mollifier's trip threshold: enqueues per window per env. Defaults to the setting's.
    trip_threshold: int = default_of("trip_threshold")
    #: The mollifier's trip window, in milliseconds. Defaults to the setting's.
    trip_window_ms: int = default_of("trip_window_ms")
    #: False for the run without the mollifier (``enabled=false``: every message goes straight
    #: to the broker), which the demo compares with.
    mollified: bool = True

    @property
    def prefix(self) -> str:
        """The prefix of every key of this run."""
        return f"mollifier-demo:{self.run_id}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DemoConfig:
        return cls(**json.loads(text))

    def settings(self, *, drainer: bool) -> MollifierSettings:
        """The mollifier's settings, all given: no ``MOLLIFIER_*`` variable is read."""
        return _GivenSettings(
            enabled=self.mollified,
            shadow_mode=False,
            mode=MollifierMode.DIVERT,
            enabled_orgs=frozenset({"*"}),
            redis_url=self.redis_url,
            key_prefix=f"{self.prefix}:m",
            trip_window_ms=self.trip_window_ms,
            trip_threshold=self.trip_threshold,
            trip_hold_ms=500,
            drainer_enabled=drainer,
            # The drain settings are the defaults: the fleet-wide drain budget keeps the burst in
            # the buffer, so nothing is tuned by hand here.
            drain_shutdown_timeout_ms=10_000,
        )


class _GivenSettings(MollifierSettings):
    """Settings from the arguments alone: a user's ``MOLLIFIER_*`` variables (a cap that rejects,
    another evaluator) made the demo fail or measure something else."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class DemoKeys:
    """Where the demo's own records live."""

    def __init__(self, config: DemoConfig) -> None:
        self.namespace = f"{config.prefix}:dramatiq"
        self.queue = "demo"
        #: Hash: message id to how many times the actor ran it (must end at exactly 1 each).
        self.seen = f"{config.prefix}:seen"
        #: List of JSON ``[org, env, sent_at_ms, started_ms, drained]``, one per actor run.
        self.runs = f"{config.prefix}:runs"
        #: List of JSON ``[org, env, at_ms]``: when a drainer put a message on the broker.
        self.drained_at = f"{config.prefix}:drained-at"
        #: Counter of worker processes that have booted.
        self.ready = f"{config.prefix}:ready"


class DrainedEnqueueRecorder(Middleware):
    """Records when each drained message reached the broker (``after_enqueue`` in the worker).

    Diverted messages never emit ``after_enqueue`` in the producer; their drained copy does, here.
    """

    def __init__(self, client: redis.Redis, keys: DemoKeys) -> None:
        self._client = client
        self._keys = keys
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._flushed_at_ms = now_ms()

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        if message.options.get(STATE_OPTION) != STATE_DRAINED:
            return
        org_id, env_id = message.options.get("org_id"), message.options.get("env_id")
        with self._lock:
            self._pending.append(json.dumps([org_id, env_id, now_ms()]))
            due = len(self._pending) >= _FLUSH_EVERY or now_ms() - self._flushed_at_ms > _FLUSH_INTERVAL_MS
        if due:
            self.flush()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._client.incr(self._keys.ready)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._flushed_at_ms = now_ms()
        if pending:
            self._client.rpush(self._keys.drained_at, *pending)


def build_broker(config: DemoConfig, *, worker: bool, extra: list[Middleware] | None = None) -> RedisBroker:
    """The demo's broker with the mollifier added last, and its actor declared on it.

    ``worker`` says whether this process runs the drainer and records drained enqueues.
    ``extra`` middleware is added before the mollifier (the producer's own recorder).
    """
    keys = DemoKeys(config)
    broker = RedisBroker(url=config.redis_url, namespace=keys.namespace)  # type: ignore[no-untyped-call]
    client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=5, socket_timeout=10)
    broker.add_middleware(CurrentMessage())
    if worker:
        broker.add_middleware(DrainedEnqueueRecorder(client, keys))
    for middleware in extra or []:
        broker.add_middleware(middleware)
    broker.add_middleware(Mollifier(config.settings(drainer=worker)))
    work_s = config.work_ms / 1000

    def handle_event(org_id: str, env_id: str, sent_at_ms: float) -> None:
        started_ms = now_ms()
        message = CurrentMessage.get_current_message()
        assert message is not None
        drained = message.options.get(STATE_OPTION) == STATE_DRAINED
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(keys.seen, message.message_id, 1)
        pipe.rpush(keys.runs, json.dumps([org_id, env_id, sent_at_ms, started_ms, drained]))
        pipe.execute()
        time.sleep(work_s)  # the "database write" this event stands for

    # No retries: a failed run must show up as a message not processed, not be papered over.
    dramatiq.actor(actor_name=ACTOR_NAME, queue_name=keys.queue, broker=broker, max_retries=0)(handle_event)
    return broker


def setup_worker() -> None:
    """Entry point for ``dramatiq dramatiq_mollifier.demo.app:setup_worker``."""
    config = DemoConfig.from_json(os.environ[CONFIG_VARIABLE])
    dramatiq.set_broker(build_broker(config, worker=True))
