"""``CrashRetries``: a delivery whose worker process died is counted under the actor's retry policy.

On the way in, one script writes this delivery's in-flight record and returns the one an
earlier delivery left. On the way out (success, failure or skip), one script clears ours. A record
found on the way in whose process is gone is a crashed attempt: ``WorkerCrashed`` is raised before
the actor runs, and Dramatiq's Retries applies ``max_retries``, ``retry_when``, ``throws`` and
backoff to it like to any other failure.

Whether that process is gone, and how it died, is :class:`~.judge.Judge`'s call, made without
waiting. While the earlier process may still be running the message (it refreshed its record or
its heartbeat within ``liveness_timeout_ms``), the earlier record is put back for a later delivery
to judge and this delivery runs without one. A redelivery of an attempt that is already over (its
ack or nack died with its worker process) is not run again: see :mod:`.repeats`. This process's
own side (heartbeat, evidence file, the records it refreshes) is :class:`~.process.WorkerProcess`.
"""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import redis
from dramatiq import Message, Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware, SkipMessage
from opentelemetry import metrics

from ..breaker import CircuitOpenError
from ..errors import CrashNotRetried, MollifierConfigurationError, WorkerCrashed
from ..redis_urls import redis_url_problem
from ..settings import MollifierSettings
from ..telemetry import ThrottledLog, meter
from .classify import CrashVerdict
from .evidence import default_evidence_dir
from .identity import host_id
from .judge import Judge, Unjudged
from .options import (
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_LIVENESS_TIMEOUT_MS,
    DEFAULT_RECORD_TTL_MS,
    DEFAULT_REPEAT_WINDOW_MS,
    check_options,
    check_placement,
)
from .process import Delivery, WorkerProcess, now_ms, time_limit_ms
from .repeats import RepeatLog, attempt_of
from .store import CrashStore, DeliveryRecord, Previous, client_for

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "DEFAULT_LIVENESS_TIMEOUT_MS",
    "DEFAULT_RECORD_TTL_MS",
    "DEFAULT_REPEAT_WINDOW_MS",
    "CrashRetries",
]


logger = logging.getLogger(__name__)


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
      heartbeat_interval_ms: How often each worker process refreshes its heartbeat key and the
        records of the messages it runs. Defaults to 2 seconds.
      liveness_timeout_ms: How long a heartbeat key outlives its last refresh, and how long a
        process on another host must have left both that key and the message's record
        unrefreshed before a delivery it held is judged crashed without evidence. A process frozen
        or cut off from Redis for longer is judged crashed too: keep it above the longest pause
        you expect. Defaults to 10 seconds.
      repeat_window_ms: How long after an attempt was failed (dead-lettered) any delivery of
        that same attempt is refused as a repeat, even a fresh publish (a delay queue publishes a
        due message again when the ack of its first publish died with its process). Later, only a
        redelivery of the failed publish itself is refused. See :mod:`.repeats`. Defaults to
        1 minute.
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
        repeat_window_ms: int = DEFAULT_REPEAT_WINDOW_MS,
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
        check_options(
            key_prefix=key_prefix,
            record_ttl_ms=record_ttl_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            liveness_timeout_ms=liveness_timeout_ms,
            repeat_window_ms=repeat_window_ms,
            flags={
                "retry_oom_kills": retry_oom_kills,
                "retry_time_limit_kills": retry_time_limit_kills,
                "install_faulthandler": install_faulthandler,
            },
        )
        self.repeat_window_ms = repeat_window_ms
        assert key_prefix is not None  # checked above
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
        self._store_lock = threading.Lock()
        # Deliveries that raised our verdict, by message id: their records stay until Retries
        # has retried (after_enqueue) or failed (after_nack) the message (see _end).
        self._verdicts: dict[str, Delivery] = {}
        self.process = WorkerProcess(
            store=lambda: self.store,
            evidence_dir=self.evidence_dir,
            install_faulthandler=install_faulthandler,
            heartbeat_interval_ms=heartbeat_interval_ms,
            liveness_timeout_ms=liveness_timeout_ms,
            record_ttl_ms=record_ttl_ms,
            failed_open=self._failed_open,
        )
        instruments = meter(meter_provider)
        self._warnings = ThrottledLog(logger)
        self._crashes = instruments.create_counter(
            "mollifier.crash_retries",
            unit="{attempt}",
            description="Crashed attempts found at a message's next delivery, by signal, cause and action.",
        )
        self._undecided_count = instruments.create_counter(
            "mollifier.crash_undecided",
            unit="{delivery}",
            description="Deliveries that found an earlier one's process silent for less than "
            "the liveness timeout: not judged, the earlier record left in place.",
        )
        self._repeats = RepeatLog(instruments)
        self._fail_open = instruments.create_counter(
            "mollifier.crash_fail_open",
            unit="{event}",
            description="Redis errors that CrashRetries ignored to let the message run (fail-open).",
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> CrashRetries:
        """Build the middleware over a new client for ``url`` with bounded socket timeouts.
        Raises :class:`MollifierConfigurationError` for a URL the settings would refuse."""
        problem = redis_url_problem(url)
        if problem is not None:
            raise MollifierConfigurationError(f"CrashRetries.from_url: {problem}")
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
    def before_declare_actor(self, broker: Broker, actor: Any) -> None:
        check_placement(broker, self)  # a MiddlewareError: the app fails at import

    after_declare_actor = before_declare_actor  # add_middleware runs it for each declared actor

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        check_placement(broker, self)
        self.process.boot()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.process.begin_shutdown()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.process.end_shutdown()

    def beat_once(self) -> None:
        """One heartbeat of this process (see :meth:`WorkerProcess.beat_once`)."""
        self.process.beat_once()

    # Message hooks --------------------------------------------------------------------------
    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        identity = self.process.boot()
        now = now_ms()
        limit_ms = time_limit_ms(broker, message)
        limit_at_ms = None if limit_ms is None else now + limit_ms
        delivery = Delivery(message.message_id, uuid.uuid4().hex, limit_at_ms)
        record = DeliveryRecord(
            token=delivery.token,
            host=identity.host,
            hostname=identity.hostname,
            pid=identity.pid,
            start_ticks=identity.start_ticks,
            proc_id=identity.proc_id,
            started_ms=now,
            ttl_ms=self.record_ttl_ms,
        )
        attempt = attempt_of(message)
        self._repeats.started(message.message_id, attempt)
        try:
            entered = self.store.enter(
                message.message_id,
                record,
                attempt=attempt.number,
                publish_id=attempt.publish_id,
                redelivered=attempt.redelivered,
                repeat_window_ms=self.repeat_window_ms,
            )
        except redis.RedisError:
            self._failed_open("enter")
            return
        if entered.repeat is not None:
            self._repeats.refused(message.message_id, attempt, entered.repeat)
            if entered.repeat == "failed":
                message.fail()  # rejected again: its first rejection may have died with its process
            raise SkipMessage(f"attempt {attempt.number} of this message is over ({entered.repeat})")
        self.process.track(delivery)
        previous = entered.previous
        if previous is None:
            return
        try:
            prior = DeliveryRecord.decode(previous.raw)
        except (ValueError, KeyError, TypeError):
            logger.warning("mollifier.crash_record_malformed message_id=%r", message.message_id)
            return
        silent_ms = previous.silent_ms(prior, default_ttl_ms=self.record_ttl_ms)
        verdict = self.judge(prior, message.message_id, silent_ms=silent_ms)
        if verdict is Unjudged.UNDECIDED:
            self._undecided(message, prior, delivery, previous, silent_ms)
        elif isinstance(verdict, CrashVerdict):
            self._crashed(message, prior, verdict)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._end(message, verdict=isinstance(exception, (WorkerCrashed, CrashNotRetried)))

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message)

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int) -> None:
        if self._verdicts:  # the retry of a message we gave a verdict on is in the broker
            self._conclude_verdict(message.message_id)
        retries = message.options.get("retries")  # read alone: this runs on every enqueue
        if not isinstance(retries, int) or retries < 1:
            return
        try:  # a retry is in the broker: every earlier attempt is over
            self.store.conclude(message.message_id, "superseded", retries - 1)
        except redis.RedisError:
            self._failed_open("conclude")

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._conclude_verdict(message.message_id)
        attempt = self._repeats.current(message.message_id)
        if attempt is None:
            return
        try:
            self.store.conclude(message.message_id, "failed", attempt.number, attempt.publish_id)
        except redis.RedisError:
            self._failed_open("conclude")

    def _end(self, message: MessageProxy, *, verdict: bool = False) -> None:
        delivery = self.process.untrack()
        if delivery is None or delivery.message_id != message.message_id:
            return  # our before hook did not run for it (an earlier middleware raised)
        if verdict:
            # Our verdict on an earlier crash: this record stays until Retries has retried or
            # failed the message. A process that dies first (a sibling thread's crash) leaves it
            # to the next delivery, which judges again instead of running the actor once more.
            self._verdicts[message.message_id] = delivery
            return
        self.process.release(delivery)

    def _conclude_verdict(self, message_id: str) -> None:
        delivery = self._verdicts.pop(message_id, None)
        if delivery is not None:
            self.process.release(delivery)

    # Judgement ------------------------------------------------------------------------------
    def judge(self, prior: DeliveryRecord, message_id: str, *, silent_ms: int) -> CrashVerdict | Unjudged:
        """The verdict on an earlier delivery's record, which nobody refreshed for ``silent_ms``."""
        if self._judge is None:
            self._judge = Judge(
                self.store,
                evidence_dir=self.evidence_dir,
                liveness_timeout_ms=self.liveness_timeout_ms,
                retry_oom_kills=self.retry_oom_kills,
                retry_time_limit_kills=self.retry_time_limit_kills,
                failed_open=self._failed_open,
            )
        identity = self.process.identity
        own_host = identity.host if identity else host_id()
        return self._judge.verdict(prior, message_id, own_host=own_host, silent_ms=silent_ms)

    def _undecided(
        self,
        message: MessageProxy,
        prior: DeliveryRecord,
        delivery: Delivery,
        previous: Previous,
        silent_ms: int,
    ) -> None:
        """Give the earlier record back for a later delivery to judge; run this one untracked."""
        self._undecided_count.add(1)
        logger.warning(
            "mollifier.crash_undecided message_id=%r pid=%d host=%s silent_ms=%d",
            message.message_id,
            prior.pid,
            prior.hostname,
            silent_ms,
        )
        try:
            self.store.restore(message.message_id, delivery.token, previous)
        except redis.RedisError:
            self._failed_open("restore")
            return  # our record stays; keep it tracked so that it is cleared at the end
        self.process.untrack()

    def _crashed(self, message: MessageProxy, prior: DeliveryRecord, verdict: CrashVerdict) -> None:
        action = "retry_policy" if verdict.retry else "failed"
        self._crashes.add(1, {"signal": verdict.signal_name, "cause": verdict.cause.value, "action": action})
        message.options.update(crash_signal=verdict.signal_name, crash_cause=verdict.cause.value)
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
    def _failed_open(self, stage: str) -> None:
        """Count a Redis error let pass (in its ``except`` block); one line per stage per interval.
        A call the open breaker refused counts as stage ``breaker``; the breaker logs that."""
        if isinstance(sys.exc_info()[1], CircuitOpenError):
            return self._fail_open.add(1, {"stage": "breaker"})
        self._fail_open.add(1, {"stage": stage})
        self._warnings.throttled_warning(
            stage, "mollifier.crash_fail_open stage=%s", stage, exc_info=sys.exc_info()[1]
        )
