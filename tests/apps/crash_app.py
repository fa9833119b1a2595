"""A Dramatiq app whose actors really segfault, for ``dramatiq tests.apps.crash_app``.

Configured by environment variables set by ``tests/crash_helpers.py``:

``CRASH_BROKER``            ``redis`` or ``rabbitmq``
``CRASH_BROKER_URL``        the broker's URL
``CRASH_REDIS_URL``         Redis for CrashRetries and for the counters the actors keep
``CRASH_PREFIX``            CrashRetries' key prefix, also the prefix of the counters
``CRASH_QUEUE``             the queue every actor uses
``CRASH_EVIDENCE_DIR``      CrashRetries' evidence directory
``CRASH_HOST``              optional: the host id this worker claims, to play a second host
``CRASH_LIVENESS_MS``       optional: CrashRetries' ``liveness_timeout_ms`` (default 2000)
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.crash import CrashRetries, WorkerCrashed, identity

if os.environ.get("CRASH_HOST"):
    # Two workers on one machine play two hosts: neither can see the other's PIDs, as on two
    # machines, so only Redis (heartbeats, records, death notices) tells them about each other.
    identity.host_id = lambda: os.environ["CRASH_HOST"]

PREFIX = os.environ["CRASH_PREFIX"]
QUEUE = os.environ["CRASH_QUEUE"]
#: Tiny backoffs (ms) so a retry is prompt.
BACKOFF: dict[str, Any] = {"min_backoff": 10, "max_backoff": 50}

counters = client_from_url(os.environ["CRASH_REDIS_URL"])


def make_broker() -> Broker:
    url = os.environ["CRASH_BROKER_URL"]
    if os.environ["CRASH_BROKER"] == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    from dramatiq.brokers.redis import RedisBroker

    # A dead worker's unacked messages come back 3 s after its last heartbeat; maintenance on
    # every command so that happens on the first fetch after that.
    return RedisBroker(url=url, namespace=PREFIX, heartbeat_timeout=3_000, maintenance_chance=1_000_000)


class RecordCrashes(Middleware):
    """Writes every WorkerCrashed the worker sees to ``<prefix>:test:crashes`` for the test."""

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: Any = None
    ) -> None:
        self.after_skip_message(broker, message, exception=exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy, exception: Any = None) -> None:
        exception = exception or message._exception
        if isinstance(exception, WorkerCrashed):
            entry = f"{message.message_id} {exception.signal_name} {exception.cause}"
            counters.rpush(f"{PREFIX}:test:crashes", entry)


class DieAfterFirstVerdict(Middleware):
    """Kills the process once, right after CrashRetries' verdict on ``crash_then_killed`` and
    before Retries acts on it, as a sibling thread's crash would (its after hook runs between)."""

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: Any = None
    ) -> None:
        verdict = isinstance(exception, WorkerCrashed) and message.actor_name == "crash_then_killed"
        if verdict and counters.incr(f"{PREFIX}:test:verdict-kills") == 1:
            os.kill(os.getpid(), signal.SIGKILL)


broker = make_broker()
broker.add_middleware(RecordCrashes())
broker.add_middleware(DieAfterFirstVerdict())
broker.add_middleware(
    CrashRetries.from_url(
        os.environ["CRASH_REDIS_URL"],
        key_prefix=PREFIX,
        evidence_dir=os.environ["CRASH_EVIDENCE_DIR"],
        heartbeat_interval_ms=500,
        liveness_timeout_ms=int(os.environ.get("CRASH_LIVENESS_MS", "2000")),
    )
)
dramatiq.set_broker(broker)


def segfault(counter: str) -> None:
    counters.incr(counter)
    ctypes.string_at(0)  # reads address 0: SIGSEGV in C, no Python exception


crash_max2 = dramatiq.actor(actor_name="crash_max2", queue_name=QUEUE, max_retries=2, **BACKOFF)(segfault)
crash_max0 = dramatiq.actor(actor_name="crash_max0", queue_name=QUEUE, max_retries=0, **BACKOFF)(segfault)
crash_then_killed = dramatiq.actor(
    actor_name="crash_then_killed", queue_name=QUEUE, max_retries=0, **BACKOFF
)(segfault)
crash_refused = dramatiq.actor(
    actor_name="crash_refused",
    queue_name=QUEUE,
    max_retries=20,
    retry_when=lambda retries, exc: not isinstance(exc, WorkerCrashed),
    **BACKOFF,
)(segfault)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def normal(counter: str) -> None:
    counters.incr(counter)


@dramatiq.actor(queue_name=QUEUE, max_retries=3, **BACKOFF)
def slow(counter: str, first_run_s: float) -> None:
    """Runs ``first_run_s`` the first time it starts, at once afterwards."""
    started = counters.incr(f"{counter}:started")
    if started == 1:
        time.sleep(first_run_s)
    counters.incr(f"{counter}:done")


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def held(counter: str, first_run_s: float) -> None:
    """Like ``slow``, and records the PID of each run's process (``<counter>:pid:<run>``)."""
    started = counters.incr(f"{counter}:started")
    counters.set(f"{counter}:pid:{started}", os.getpid())
    if started == 1:
        time.sleep(first_run_s)
    counters.incr(f"{counter}:done")
