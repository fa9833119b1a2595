"""Deciding whether the process behind an earlier delivery's record is gone, and how it died."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from .classify import CrashVerdict, classify
from .evidence import Evidence, read_evidence
from .identity import same_process_alive
from .store import CrashStore, DeliveryRecord, ProcState

__all__ = ["Judge"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Judge:
    """Judges in-flight records left by earlier deliveries.

    Same host (same boot and PID namespace): at once, by PID and start time; how it died comes
    from its evidence file, or from Redis if a restarted neighbour published it already. Another
    host: by its heartbeat key, waiting at most ``liveness_timeout_ms`` (plus one interval) for
    the key to expire (gone) or its beat to move on (alive).
    """

    store: CrashStore
    evidence_dir: Path
    liveness_timeout_ms: int
    heartbeat_interval_ms: int
    retry_oom_kills: bool
    retry_time_limit_kills: bool
    #: Called with a stage name when Redis fails (fail-open): the judge goes on without what it
    #: could not read.
    failed_open: Callable[[str], None]

    def verdict(self, prior: DeliveryRecord, message_id: str, *, own_host: str) -> CrashVerdict | None:
        """A verdict when ``prior``'s process is gone; None while it is alive (or unknowable)."""
        if prior.host == own_host:
            if same_process_alive(prior.pid, prior.start_ticks):
                return None  # a duplicate delivery, or a retry racing our own clean-up
            evidence = read_evidence(self.evidence_dir, prior.pid, prior.start_ticks)
            if evidence is None:  # a restarted neighbour may have published it already
                state = self._proc_state(prior.proc_id)
                evidence = state.evidence if state is not None else None
            return self._classify(evidence, message_id)
        return self._remote(prior, message_id)

    def _remote(self, prior: DeliveryRecord, message_id: str) -> CrashVerdict | None:
        deadline = time.monotonic() + (self.liveness_timeout_ms + self.heartbeat_interval_ms) / 1000
        first_beat: int | None = None
        while True:
            try:
                state = self.store.get_proc(prior.proc_id)
            except redis.RedisError:
                self.failed_open("judge")
                return None
            except (ValueError, KeyError, TypeError):
                state = None
            if state is None:
                return self._classify(None, message_id)
            if state.status == "dead":
                return self._classify(state.evidence, message_id)
            if first_beat is None:
                first_beat = state.beat_ms
            elif state.beat_ms != first_beat:
                logger.warning(
                    "mollifier.crash_duplicate_delivery message_id=%r other_host=%s",
                    message_id,
                    prior.hostname,
                )
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(remaining, self.heartbeat_interval_ms / 2000))

    def _proc_state(self, proc_id: str) -> ProcState | None:
        try:
            return self.store.get_proc(proc_id)
        except redis.RedisError:
            self.failed_open("judge")
        except (ValueError, KeyError, TypeError):
            pass
        return None

    def _classify(self, evidence: Evidence | None, message_id: str) -> CrashVerdict:
        return classify(
            evidence,
            message_id=message_id,
            retry_oom_kills=self.retry_oom_kills,
            retry_time_limit_kills=self.retry_time_limit_kills,
        )
