"""Deciding whether the process behind an earlier delivery's record is gone, and how it died.

The judge never waits. Proof of death is acted on at once: on the same host the PID and start
time (or the evidence file), from another host a death notice a neighbour of the dead process
published. Without proof, silence decides, and only a long one: the record's process must have
let both its heartbeat key and this message's own record go unrefreshed for at least
``liveness_timeout_ms``. A process that is frozen (SIGSTOP, a long GC or VM pause) or cut off
from Redis for less than that still holds its message: its delivery is not judged. Anything in
between is :attr:`Unjudged.UNDECIDED`, and the caller leaves the record for a later delivery.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from .classify import CrashVerdict, classify
from .evidence import Evidence, read_evidence
from .identity import same_process_alive
from .store import CrashStore, DeliveryRecord, ProcState

__all__ = ["Judge", "Unjudged"]


class Unjudged(enum.Enum):
    """A judgement that is not a crash."""

    #: Its process lives (on this host), or lives and no longer refreshes this record (it ended
    #: without clearing it): the new delivery takes the record over.
    ALIVE = "alive"
    #: Its process may still be running the message (it refreshed the record or beat within
    #: ``liveness_timeout_ms``), or may have just died: no verdict yet. The earlier record stays
    #: for a later delivery to judge; this one runs without a record of its own.
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Judge:
    """Judges in-flight records left by earlier deliveries, without waiting.

    Same host (same boot and PID namespace): by PID and start time; how it died comes from its
    evidence file, or from Redis if a restarted neighbour published it already. Another host:
    a published death notice, else the silence of both its heartbeat key and the record.
    """

    store: CrashStore
    evidence_dir: Path
    liveness_timeout_ms: int
    retry_oom_kills: bool
    retry_time_limit_kills: bool
    #: Called with a stage name when Redis fails (fail-open): the judge goes on without what it
    #: could not read.
    failed_open: Callable[[str], None]

    def verdict(
        self, prior: DeliveryRecord, message_id: str, *, own_host: str, silent_ms: int
    ) -> CrashVerdict | Unjudged:
        """The verdict on ``prior``, whose record nobody refreshed for ``silent_ms``."""
        if prior.host == own_host:
            if same_process_alive(prior.pid, prior.start_ticks):
                return Unjudged.ALIVE  # a duplicate delivery, or a retry racing our own clean-up
            evidence = read_evidence(self.evidence_dir, prior.pid, prior.start_ticks)
            if evidence is None:  # a restarted neighbour may have published it already
                try:
                    state = self._proc_state(prior.proc_id)
                except redis.RedisError:
                    state = None
                evidence = state.evidence if state is not None else None
            return self._classify(evidence, message_id, prior.token)
        return self._remote(prior, message_id, silent_ms=silent_ms)

    def _remote(self, prior: DeliveryRecord, message_id: str, *, silent_ms: int) -> CrashVerdict | Unjudged:
        try:
            state = self._proc_state(prior.proc_id)
        except redis.RedisError:
            return Unjudged.UNDECIDED
        if state is not None and state.status == "dead":
            return self._classify(state.evidence, message_id, prior.token)
        if silent_ms < self.liveness_timeout_ms:
            return Unjudged.UNDECIDED
        if state is None:  # its heartbeat expired too: silent for the whole bound
            return self._classify(None, message_id, prior.token)
        return Unjudged.ALIVE

    def _proc_state(self, proc_id: str) -> ProcState | None:
        """What Redis knows of the process; None when nothing (or nothing readable).
        Raises ``redis.RedisError`` after counting it as a fail-open."""
        try:
            return self.store.get_proc(proc_id)
        except redis.RedisError:
            self.failed_open("judge")
            raise
        except (ValueError, KeyError, TypeError):
            return None

    def _classify(self, evidence: Evidence | None, message_id: str, token: str) -> CrashVerdict:
        return classify(
            evidence,
            message_id=message_id,
            token=token,
            retry_oom_kills=self.retry_oom_kills,
            retry_time_limit_kills=self.retry_time_limit_kills,
        )
