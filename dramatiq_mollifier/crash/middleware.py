"""``CrashRetries``: a delivery whose worker process died is counted under the actor's retry policy.

On the way in, one ``SET ... GET`` writes this delivery's in-flight record and returns the one an
earlier delivery left. On the way out (success, failure or skip), one script clears ours. A record
found on the way in whose process is gone is a crashed attempt: ``WorkerCrashed`` is raised before
the actor runs, and Dramatiq's Retries applies ``max_retries``, ``retry_when``, ``throws`` and
backoff to it like to any other failure.

Whether that process is gone, and how it died, is :class:`~.judge.Judge`'s call.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from dramatiq import Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware, TimeLimit
from opentelemetry import metrics

from ..breaker import CircuitOpenError
from ..errors import CrashNotRetried, MollifierConfigurationError, WorkerCrashed
from ..settings import MollifierSettings
from ..telemetry import ThrottledLog, meter
from .classify import CrashVerdict
from .evidence import Evidence, EvidenceFile, default_evidence_dir, publish_dead_neighbours
from .heartbeat import Heartbeat
from .identity import ProcessIdentity, host_id
from .judge import Judge
from .store import CrashStore, DeliveryRecord, ProcState, client_for

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "DEFAULT_LIVENESS_TIMEOUT_MS",
    "DEFAULT_RECORD_TTL_MS",
    "CrashRetries",
]

#: How long an in-flight record is kept for a redelivery to find: 7 days.
DEFAULT_RECORD_TTL_MS = 7 * 86_400_000
#: How often a worker process refreshes its heartbeat key: 2 seconds.
DEFAULT_HEARTBEAT_INTERVAL_MS = 2_000
#: How long a heartbeat key lives unrefreshed: 10 seconds.
DEFAULT_LIVENESS_TIMEOUT_MS = 10_000


logger = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Delivery:
    message_id: str
    token: str
    #: When the message's time limit runs out (epoch ms), if a TimeLimit middleware enforces one.
    limit_at_ms: int | None
    overrun_marked: bool = False


class CrashRetries(Middleware):
    """Count deliveries that died with their worker process under the actor's retry policy.

    Add it with ``broker.add_middleware(CrashRetries())``, after Dramatiq's default middleware
    (where ``add_middleware`` puts it): the Retries middleware must be on the broker.

    Parameters:
      client: A ``redis.Redis`` client for the records. Defaults to None: a client for the
        ``redis_url`` of :class:`MollifierSettings` (``MOLLIFIER_REDIS_URL``), made on first use.
      key_prefix: The prefix of every key. Defaults to None: the settings' ``key_prefix``
        (``MOLLIFIER_KEY_PREFIX``, else ``mollifier``), as the ``Mollifier`` beside it uses.
      record_ttl_ms: How long an in-flight record waits for a redelivery. Must exceed the longest
        time your broker takes to redeliver a dead worker's message. Defaults to 7 days.
      heartbeat_interval_ms: How often each worker process refreshes its heartbeat key.
        Defaults to 2 seconds.
      liveness_timeout_ms: How long a heartbeat key outlives its last refresh; a record from
        another host is judged crashed after at most this long. Defaults to 10 seconds.
      retry_oom_kills: Retry a crash known to be an out-of-memory kill under the actor's policy.
        Defaults to False: the message is failed (dead-lettered) at once.
      retry_time_limit_kills: Retry a crash of a message that was running past its time limit.
        Defaults to False: the message is failed at once.
      evidence_dir: Where each worker process keeps its last-words file. Defaults to
        ``<tmp>/dramatiq-mollifier-<uid>``; must be local to the host.
      install_faulthandler: Point ``faulthandler`` at the last-words file in each worker process,
        so native crash signals can be named. Defaults to True.
      meter_provider: The OpenTelemetry meter provider. Defaults to the global one.
    """

    def __init__(
        self,
        *,
        client: redis.Redis | None = None,
        key_prefix: str | None = None,
        record_ttl_ms: int = DEFAULT_RECORD_TTL_MS,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        liveness_timeout_ms: int = DEFAULT_LIVENESS_TIMEOUT_MS,
        retry_oom_kills: bool = False,
        retry_time_limit_kills: bool = False,
        evidence_dir: str | Path | None = None,
        install_faulthandler: bool = True,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        # Read (and validated) now, as Mollifier does; the client is made on first use.
        settings = MollifierSettings() if client is None or key_prefix is None else None
        self._redis_url = settings.redis_url if settings is not None else ""
        key_prefix = settings.key_prefix if settings is not None and key_prefix is None else key_prefix
        if not key_prefix:
            raise MollifierConfigurationError("key_prefix must not be empty")
        if heartbeat_interval_ms <= 0:
            raise MollifierConfigurationError("heartbeat_interval_ms must be positive")
        if liveness_timeout_ms < 2 * heartbeat_interval_ms:
            raise MollifierConfigurationError(
                "liveness_timeout_ms must be at least twice heartbeat_interval_ms"
            )
        if record_ttl_ms <= liveness_timeout_ms:
            raise MollifierConfigurationError("record_ttl_ms must exceed liveness_timeout_ms")
        self.key_prefix = key_prefix
        self.record_ttl_ms = record_ttl_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.liveness_timeout_ms = liveness_timeout_ms
        self.retry_oom_kills = retry_oom_kills
        self.retry_time_limit_kills = retry_time_limit_kills
        self.evidence_dir = Path(evidence_dir) if evidence_dir is not None else default_evidence_dir()
        self.install_faulthandler = install_faulthandler
        self._client = client
        self._store: CrashStore | None = None
        self._judge: Judge | None = None
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._inflight: dict[int, _Delivery] = {}  # by worker thread id
        self._identity: ProcessIdentity | None = None
        self._evidence: EvidenceFile | None = None
        self._heartbeat: Heartbeat | None = None
        self._stopping = False
        self._neighbours_published = False
        instruments = meter(meter_provider)
        self._warnings = ThrottledLog(logger)
        self._crashes = instruments.create_counter(
            "mollifier.crash_retries",
            unit="{attempt}",
            description="Crashed attempts found at a message's next delivery, by signal, cause and action.",
        )
        self._fail_open = instruments.create_counter(
            "mollifier.crash_fail_open",
            unit="{event}",
            description="Redis errors that CrashRetries ignored to let the message run (fail-open).",
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> CrashRetries:
        """Build the middleware over a new client for ``url`` with bounded socket timeouts."""
        return cls(client=client_for(url), **kwargs)

    @property
    def store(self) -> CrashStore:
        """The Redis store (made on first use, so nothing connects at import)."""
        store = self._store
        if store is None:
            with self._store_lock:
                if self._store is None:
                    client = self._client
                    if client is None:
                        client = self._client = client_for(self._redis_url)
                    self._store = CrashStore(
                        client, key_prefix=self.key_prefix, record_ttl_ms=self.record_ttl_ms
                    )
                store = self._store
        return store

    # Process lifecycle ----------------------------------------------------------------------
    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self._boot()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        # A message still running when the process dies after this was interrupted by shutdown.
        self._stopping = True
        if self._evidence is not None:
            self._evidence.write("shutdown")

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        with self._lock:
            abandoned = len(self._inflight)
            identity, evidence, heartbeat = self._identity, self._evidence, self._heartbeat
            self._identity = self._evidence = self._heartbeat = None
        if heartbeat is not None:
            heartbeat.stop(self.heartbeat_interval_ms)
        if identity is not None:
            try:
                if abandoned:
                    notice = ProcState("dead", _now_ms(), Evidence(shutdown=True))
                    self.store.put_proc(identity.proc_id, notice, ttl_ms=self.record_ttl_ms)
                else:
                    self.store.forget_proc(identity.proc_id)
            except redis.RedisError:
                self._failed_open("shutdown")
        if evidence is not None:
            evidence.close(keep=abandoned > 0)
        if abandoned:
            logger.warning("mollifier.crash_shutdown_abandoned count=%d", abandoned)
        self._stopping = False

    def _boot(self) -> ProcessIdentity:
        identity = self._identity
        if identity is not None and identity.pid == os.getpid():
            return identity
        with self._lock:
            identity = self._identity
            if identity is not None and identity.pid == os.getpid():
                return identity
            identity = self._identity = ProcessIdentity.current()
            self._neighbours_published = False
            try:
                self._evidence = EvidenceFile(
                    self.evidence_dir,
                    pid=identity.pid,
                    start_ticks=identity.start_ticks,
                    proc_id=identity.proc_id,
                    install_faulthandler=self.install_faulthandler,
                )
            except OSError:
                logger.warning(
                    "mollifier.crash_evidence_unavailable dir=%s", self.evidence_dir, exc_info=True
                )
                self._evidence = None
            self._heartbeat = Heartbeat(
                self.beat_once, interval_ms=self.heartbeat_interval_ms, name="mollifier-crash-heartbeat"
            )
            self._heartbeat.start()
            return identity

    def beat_once(self) -> None:
        """Refresh this process's heartbeat, mark overrunning messages, publish dead neighbours."""
        identity = self._identity
        if identity is None:
            return
        now = _now_ms()
        with self._lock:
            overrun = [
                d
                for d in self._inflight.values()
                if d.limit_at_ms is not None
                and not d.overrun_marked
                and now > d.limit_at_ms + self.heartbeat_interval_ms
            ]
            for delivery in overrun:
                delivery.overrun_marked = True
        for delivery in overrun:
            if self._evidence is not None:
                self._evidence.write(f"overrun {delivery.message_id}")
        try:
            state = ProcState("stopping" if self._stopping else "running", now)
            self.store.put_proc(identity.proc_id, state, ttl_ms=self.liveness_timeout_ms)
            if not self._neighbours_published:
                publish_dead_neighbours(
                    self.evidence_dir,
                    own=(identity.pid, identity.start_ticks),
                    publish=lambda proc_id, evidence: self.store.put_proc(
                        proc_id, ProcState("dead", _now_ms(), evidence), ttl_ms=self.record_ttl_ms
                    ),
                )
                self._neighbours_published = True
        except redis.RedisError:
            self._failed_open("heartbeat")

    # Message hooks --------------------------------------------------------------------------
    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        identity = self._boot()
        now = _now_ms()
        limit_ms = self._time_limit_ms(broker, message)
        delivery = _Delivery(
            message.message_id, uuid.uuid4().hex, None if limit_ms is None else now + limit_ms
        )
        record = DeliveryRecord(
            token=delivery.token,
            host=identity.host,
            hostname=identity.hostname,
            pid=identity.pid,
            start_ticks=identity.start_ticks,
            proc_id=identity.proc_id,
            started_ms=now,
        )
        try:
            previous = self.store.enter(message.message_id, record)
        except redis.RedisError:
            self._failed_open("enter")
            return
        with self._lock:
            self._inflight[threading.get_ident()] = delivery
        if previous is None:
            return
        try:
            prior = DeliveryRecord.decode(previous)
        except (ValueError, KeyError, TypeError):
            logger.warning("mollifier.crash_record_malformed message_id=%r", message.message_id)
            return
        verdict = self.judge(prior, message.message_id)
        if verdict is not None:
            self._crashed(message, prior, verdict)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._end(message)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message)

    def _end(self, message: MessageProxy) -> None:
        with self._lock:
            delivery = self._inflight.pop(threading.get_ident(), None)
        if delivery is None or delivery.message_id != message.message_id:
            return  # our before hook did not run for it (an earlier middleware raised)
        try:
            self.store.release(message.message_id, delivery.token)
        except redis.RedisError:
            self._failed_open("release")

    # Judgement ------------------------------------------------------------------------------
    def judge(self, prior: DeliveryRecord, message_id: str) -> CrashVerdict | None:
        """The verdict on an earlier delivery's record: None while its process is alive."""
        if self._judge is None:
            self._judge = Judge(
                self.store,
                evidence_dir=self.evidence_dir,
                liveness_timeout_ms=self.liveness_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                retry_oom_kills=self.retry_oom_kills,
                retry_time_limit_kills=self.retry_time_limit_kills,
                failed_open=self._failed_open,
            )
        identity = self._identity
        return self._judge.verdict(prior, message_id, own_host=identity.host if identity else host_id())

    def _crashed(self, message: MessageProxy, prior: DeliveryRecord, verdict: CrashVerdict) -> None:
        action = "retry_policy" if verdict.retry else "failed"
        self._crashes.add(1, {"signal": verdict.signal_name, "cause": verdict.cause.value, "action": action})
        message.options["crash_signal"] = verdict.signal_name
        message.options["crash_cause"] = verdict.cause.value
        logger.error(
            "mollifier.worker_crashed message_id=%r pid=%d host=%s signal=%s cause=%s action=%s",
            message.message_id,
            prior.pid,
            prior.hostname,
            verdict.signal_name,
            verdict.cause.value,
            action,
        )
        text = (
            f"An earlier delivery of message {message.message_id!r} died with its worker process "
            f"(pid {prior.pid} on {prior.hostname}): signal {verdict.signal_name}, "
            f"cause {verdict.cause.value}."
        )
        if verdict.last_words:
            text += "\nLast words of that process:\n" + verdict.last_words
        if verdict.retry:
            raise WorkerCrashed(text, signal_name=verdict.signal_name, cause=verdict.cause.value)
        message.fail()
        raise CrashNotRetried(text, signal_name=verdict.signal_name, cause=verdict.cause.value)

    # Helpers --------------------------------------------------------------------------------
    @staticmethod
    def _time_limit_ms(broker: Broker, message: MessageProxy) -> int | None:
        """The message's time limit if a TimeLimit middleware enforces one, else None."""
        enforcer = next((m for m in broker.middleware if isinstance(m, TimeLimit)), None)
        if enforcer is None:
            return None
        limit = message.options.get("time_limit")
        if limit is None:
            try:
                limit = broker.get_actor(message.actor_name).options.get("time_limit")
            except ActorNotFound:
                limit = None
        return int(limit if limit is not None else enforcer.time_limit)

    def _failed_open(self, stage: str) -> None:
        """Count a Redis error let pass (in its ``except`` block); one line per stage per interval.
        A call the open breaker refused counts as stage ``breaker``; the breaker logs that."""
        if isinstance(sys.exc_info()[1], CircuitOpenError):
            return self._fail_open.add(1, {"stage": "breaker"})
        self._fail_open.add(1, {"stage": stage})
        self._warnings.throttled_warning(
            stage, "mollifier.crash_fail_open stage=%s", stage, exc_info=sys.exc_info()[1]
        )
