"""This worker process as other processes see it: its identity, its evidence file, its heartbeat.

Every heartbeat refreshes the process's heartbeat key and the in-flight record of each message it
is running, so a judge elsewhere can tell a process that still holds a message from one that went
silent. It also marks messages overrunning their time limit in the evidence file and, once per
process, publishes what dead neighbours of this host left behind.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import TimeLimit

from .evidence import Evidence, EvidenceFile, publish_dead_neighbours
from .heartbeat import Heartbeat
from .identity import ProcessIdentity
from .store import CrashStore, ProcState

__all__ = ["Delivery", "WorkerProcess", "now_ms", "time_limit_ms"]

logger = logging.getLogger(__name__)


def now_ms() -> int:
    """The wall clock, epoch milliseconds."""
    return int(time.time() * 1000)


@dataclass
class Delivery:
    """A delivery this process runs, with a record of its own in Redis."""

    message_id: str
    token: str
    #: When the message's time limit runs out (epoch ms), if a TimeLimit middleware enforces one.
    limit_at_ms: int | None
    overrun_marked: bool = False


def time_limit_ms(broker: Broker, message: MessageProxy) -> int | None:
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


class WorkerProcess:
    """The calling worker process's identity, evidence file, heartbeat and deliveries in flight.

    Parameters:
      store: Returns the Redis store (called on each use: the store is made on first use).
      evidence_dir: Where the evidence file lives.
      install_faulthandler: Point ``faulthandler`` at the evidence file.
      heartbeat_interval_ms: How often the heartbeat runs.
      liveness_timeout_ms: How long the heartbeat key lives unrefreshed.
      record_ttl_ms: How long a death notice is kept.
      failed_open: Called with a stage name inside the ``except`` block of a Redis error.
    """

    def __init__(
        self,
        *,
        store: Callable[[], CrashStore],
        evidence_dir: Path,
        install_faulthandler: bool,
        heartbeat_interval_ms: int,
        liveness_timeout_ms: int,
        record_ttl_ms: int,
        failed_open: Callable[[str], None],
    ) -> None:
        self._store = store
        self.evidence_dir = evidence_dir
        self.install_faulthandler = install_faulthandler
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.liveness_timeout_ms = liveness_timeout_ms
        self.record_ttl_ms = record_ttl_ms
        self._failed_open = failed_open
        self._lock = threading.Lock()
        self._inflight: dict[int, Delivery] = {}  # by worker thread id
        # (message id, token) of ended deliveries whose record a failed release left behind:
        # released again on each heartbeat and at shutdown, or a later delivery would judge the
        # record of a process that exited cleanly as a crash.
        self._unreleased: list[tuple[str, str]] = []
        self.identity: ProcessIdentity | None = None
        self._evidence: EvidenceFile | None = None
        self._heartbeat: Heartbeat | None = None
        self._stopping = False
        self._neighbours_published = False

    def boot(self) -> ProcessIdentity:
        """This process's identity; the first call in a process starts its heartbeat."""
        identity = self.identity
        if identity is not None and identity.pid == os.getpid():
            return identity
        with self._lock:
            identity = self.identity
            if identity is not None and identity.pid == os.getpid():
                return identity
            identity = self.identity = ProcessIdentity.current()
            self._inflight.clear()  # a forked child runs none of its parent's deliveries
            self._unreleased.clear()
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

    def track(self, delivery: Delivery) -> None:
        """Count ``delivery`` as running on the calling thread."""
        with self._lock:
            self._inflight[threading.get_ident()] = delivery

    def untrack(self) -> Delivery | None:
        """The calling thread's delivery, no longer running; None if it had none."""
        with self._lock:
            return self._inflight.pop(threading.get_ident(), None)

    def release(self, delivery: Delivery) -> None:
        """Delete the record of ``delivery``, which ended; kept to try again if Redis fails."""
        self._release_all([(delivery.message_id, delivery.token)])

    def _release_all(self, deliveries: list[tuple[str, str]]) -> None:
        store = self._store()
        for at, (message_id, token) in enumerate(deliveries):
            try:
                store.release(message_id, token)
            except redis.RedisError:
                self._failed_open("release")
                with self._lock:
                    self._unreleased.extend(deliveries[at:])
                return

    def _release_again(self) -> None:
        with self._lock:
            pending, self._unreleased = self._unreleased, []
        if pending:
            self._release_all(pending)

    def beat_once(self) -> None:
        """Refresh the heartbeat and in-flight records, mark overruns, publish dead neighbours."""
        identity = self.identity
        if identity is None:
            return
        now = now_ms()
        with self._lock:
            running = [(d.message_id, d.token) for d in self._inflight.values()]
            overrun = [
                d
                for d in self._inflight.values()
                if d.limit_at_ms is not None
                and not d.overrun_marked
                and now > d.limit_at_ms + self.heartbeat_interval_ms
            ]
            for delivery in overrun:
                delivery.overrun_marked = True
        self._release_again()
        for delivery in overrun:
            if self._evidence is not None:
                # The delivery, not only the message: a later attempt of it may die otherwise.
                self._evidence.write(f"overrun {delivery.message_id} {delivery.token}")
        try:
            store = self._store()
            state = ProcState("stopping" if self._stopping else "running", now)
            store.put_proc(identity.proc_id, state, ttl_ms=self.liveness_timeout_ms)
            store.refresh(running)
            if not self._neighbours_published:
                publish_dead_neighbours(
                    self.evidence_dir,
                    own=(identity.pid, identity.start_ticks),
                    publish=lambda proc_id, evidence: store.put_proc(
                        proc_id, ProcState("dead", now_ms(), evidence), ttl_ms=self.record_ttl_ms
                    ),
                )
                self._neighbours_published = True
        except redis.RedisError:
            self._failed_open("heartbeat")

    def begin_shutdown(self) -> None:
        """A message still running when the process dies after this was interrupted by shutdown."""
        self._stopping = True
        if self._evidence is not None:
            self._evidence.write("shutdown")

    def end_shutdown(self) -> None:
        """Stop the heartbeat; leave a death notice if deliveries were abandoned, else no trace."""
        with self._lock:
            abandoned = len(self._inflight)
            identity, evidence, heartbeat = self.identity, self._evidence, self._heartbeat
            self.identity = self._evidence = self._heartbeat = None
        if heartbeat is not None:
            heartbeat.stop(self.heartbeat_interval_ms)
        self._release_again()
        if identity is not None:
            try:
                if abandoned:
                    notice = ProcState("dead", now_ms(), Evidence(shutdown=True))
                    self._store().put_proc(identity.proc_id, notice, ttl_ms=self.record_ttl_ms)
                else:
                    self._store().forget_proc(identity.proc_id)
            except redis.RedisError:
                self._failed_open("shutdown")
        if evidence is not None:
            evidence.close(keep=abandoned > 0)
        if abandoned:
            logger.warning("mollifier.crash_shutdown_abandoned count=%d", abandoned)
        self._stopping = False
