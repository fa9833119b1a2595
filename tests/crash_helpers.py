"""Run the real ``dramatiq`` CLI on ``tests.apps.crash_app`` the way a supervisor would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from dramatiq import Message, Worker
from dramatiq.broker import Broker
from dramatiq.brokers.stub import StubBroker
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from dramatiq_mollifier.crash.identity import ProcessIdentity
from dramatiq_mollifier.crash.store import DeliveryRecord

REPO = Path(__file__).resolve().parent.parent
APP = "tests.apps.crash_app"


@dataclass
class CrashApp:
    """One isolated configuration of the crash app: its own prefix, queue and evidence dir."""

    broker: str
    broker_url: str
    redis_url: str
    evidence_dir: Path
    prefix: str = field(default_factory=lambda: f"ctest-{uuid.uuid4().hex[:8]}")
    #: The host id the workers claim ("": their real one); two apps with two ids play two hosts.
    host: str = ""
    #: CrashRetries' liveness_timeout_ms in the workers (0: the app's default, 2 s).
    liveness_ms: int = 0

    @property
    def queue(self) -> str:
        return f"{self.prefix}-q"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CRASH_BROKER": self.broker,
            "CRASH_BROKER_URL": self.broker_url,
            "CRASH_REDIS_URL": self.redis_url,
            "CRASH_PREFIX": self.prefix,
            "CRASH_QUEUE": self.queue,
            "CRASH_EVIDENCE_DIR": str(self.evidence_dir),
            "PYTHONFAULTHANDLER": "",
            "CRASH_HOST": self.host,
            "CRASH_LIVENESS_MS": str(self.liveness_ms or 2_000),
        }

    def send(self, actor_name: str, *args: object) -> str:
        """Enqueue a message for one of the app's actors through a plain broker; its id."""
        broker: Broker
        if self.broker == "rabbitmq":
            from dramatiq.brokers.rabbitmq import RabbitmqBroker

            broker = RabbitmqBroker(url=self.broker_url, middleware=[])
        else:
            from dramatiq.brokers.redis import RedisBroker

            broker = RedisBroker(url=self.broker_url, namespace=self.prefix, middleware=[])
        try:
            message: Message[Any] = Message(
                queue_name=self.queue, actor_name=actor_name, args=args, kwargs={}, options={}
            )
            return broker.enqueue(message).message_id
        finally:
            broker.close()


class Supervisor:
    """Starts ``dramatiq <app> --processes 1 --threads 1`` and starts it again whenever it exits.

    The CLI stops as a whole when its worker process dies of a signal; a supervisor (systemd,
    Kubernetes, supervisord) starts it again. Output goes to ``log_path``.
    """

    def __init__(self, app: CrashApp, log_path: Path, *extra_args: str, gevent: bool = False) -> None:
        self.app = app
        # Dramatiq's gevent launcher patches the worker's threads, CrashRetries' included.
        self.launcher = (
            [str(Path(sys.executable).with_name("dramatiq-gevent"))]
            if gevent
            else [sys.executable, "-m", "dramatiq"]
        )
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exit_codes: list[int] = []

    def start(self) -> None:
        command = [
            *self.launcher, APP,
            "--processes", "1", "--threads", "1",
            "--path", str(REPO),
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.app.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: a kill ends its worker processes too
            )
        self.starts += 1

    def run_until(self, done: Callable[[], bool], *, timeout_s: float) -> bool:
        """Keep the CLI running (restarting it when it exits) until ``done()`` or the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                if self.process is not None:
                    self.exit_codes.append(self.process.returncode)
                self.start()
            if done():
                return True
            time.sleep(0.1)
        return done()

    def terminate(self, timeout_s: float = 30) -> int | None:
        """SIGTERM the CLI (a graceful shutdown) and wait for it; its exit code. One that does not
        stop in time is killed with its worker processes."""
        process = self.process
        if process is None:
            return None
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            # Also when a test timeout interrupts the wait: nothing of it may outlive the test.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self.process = None
        self.exit_codes.append(process.returncode)
        return process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def count(client: redis.Redis, key: str) -> int:
    value = client.get(key)
    return int(value) if value is not None else 0


def crashes(client: redis.Redis, app: CrashApp) -> list[str]:
    """Every WorkerCrashed the app's workers saw: ``"<message id> <signal> <cause>"``."""
    return [bytes(v).decode() for v in client.lrange(f"{app.prefix}:test:crashes", 0, -1)]


def in_flight_records(client: redis.Redis, app: CrashApp) -> list[bytes]:
    return list(client.scan_iter(f"{app.prefix}:crash:msg:*"))


def redis_dead_letters(app: CrashApp) -> dict[str, Message[Any]]:
    """The messages in the RedisBroker dead-letter set of the app's queue, by message id."""
    with redis.Redis.from_url(app.broker_url) as client:
        stored = client.hvals(f"{app.prefix}:{app.queue}.XQ.msgs")
    messages = [Message.decode(bytes(data)) for data in stored]
    return {message.message_id: message for message in messages}


_rabbitmq_dead: dict[str, dict[str, Message[Any]]] = {}


def rabbitmq_dead_letters(url: str, app: CrashApp) -> dict[str, Message[Any]]:
    """Messages dead-lettered so far to the app queue's ``.XQ`` queue (drained as read)."""
    import pika

    seen = _rabbitmq_dead.setdefault(app.queue, {})
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPConnectionError:
        # A busy node may refuse one poll; the caller polls again.
        return dict(seen)
    try:
        channel = connection.channel()
        while True:
            method, _properties, body = channel.basic_get(f"{app.queue}.XQ", auto_ack=True)
            if method is None:
                break
            message = Message.decode(body)
            seen[message.message_id] = message
    finally:
        connection.close()
    return dict(seen)


# In-process helpers (StubBroker workers, records of made-up deliveries) -------------------------
def points(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], int]:
    """Counter values of instrument ``name`` by sorted attribute items."""
    found: dict[tuple[tuple[str, Any], ...], int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        assert isinstance(point, NumberDataPoint)
                        found[tuple(sorted((point.attributes or {}).items()))] = int(point.value)
    return found


def run_worker(broker: StubBroker, queue: str = "default") -> None:
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join(queue, timeout=10_000, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def message(message_id: str, actor_name: str = "work") -> Message[Any]:
    return Message(
        queue_name="default", actor_name=actor_name, args=(), kwargs={}, options={}, message_id=message_id
    )


def record_of(identity: ProcessIdentity, **changes: Any) -> DeliveryRecord:
    fields: dict[str, Any] = {
        "token": uuid.uuid4().hex,
        "host": identity.host,
        "hostname": identity.hostname,
        "pid": identity.pid,
        "start_ticks": identity.start_ticks,
        "proc_id": identity.proc_id,
        "started_ms": int(time.time() * 1000),
        **changes,
    }
    return DeliveryRecord(**fields)
