"""Settling what the handlers did: ack successes in one call, requeue or dead-letter failures,
give back entries whose handler never started.

A failure is classified first (:mod:`.failures`). The broker unavailable: the entry goes back
untried at once, no attempt consumed, and the drainer backs off. An actor or queue this worker
does not declare: the entry goes back untried after a delay, for a grace period (a rolling deploy),
then is dead-lettered. Any other error: the entry is requeued (one attempt consumed) after a
per-entry delay, doubling per attempt, until ``max_attempts``. A delayed entry stays DRAINING
under this drainer's lease meanwhile, so a crash only delays it until the lease expires.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from ..buffer.drain_protocol import DrainProtocol
from ..errors import BrokerUnavailableError, EntryCancelled, UndeliverableEntryError, UnknownDestinationError
from ..models import BufferEntry
from ..telemetry import DrainResultKind, Telemetry
from .failures import RETRY_DELAY_MS, is_unavailable, retry_delay_ms
from .handler_pool import Completion, NotStarted

__all__ = ["UNKNOWN_ACTOR_GRACE_MS", "Settler"]

logger = logging.getLogger(__name__)

#: How long entries for an undeclared actor or queue are retried before dead-lettering, in ms.
UNKNOWN_ACTOR_GRACE_MS = 300_000


class Settler:
    """Settles completions on the buffer, and records what was drained.

    Parameters:
      protocol: The buffer's drain side.
      telemetry: Where drain metrics go.
      max_attempts: Handler attempts before an entry is dead-lettered.
      is_retryable: Whether a handler exception may be retried.
      retry_delay_ms: The wait before an entry's second attempt, doubled for each later one (at
        most half the lease); 0 requeues at once. Defaults to 1 second.
      unknown_actor_grace_ms: How long entries for an actor or queue this worker does not declare
        are retried before they are dead-lettered, counted from the first such entry of the actor.
        Defaults to 5 minutes.
      clock: Monotonic seconds. Defaults to ``time.monotonic``.
    """

    def __init__(
        self,
        protocol: DrainProtocol,
        *,
        telemetry: Telemetry,
        max_attempts: int,
        is_retryable: Callable[[BaseException], bool],
        retry_delay_ms: int = RETRY_DELAY_MS,
        unknown_actor_grace_ms: int = UNKNOWN_ACTOR_GRACE_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._buffer = protocol
        self._telemetry = telemetry
        self.max_attempts = max_attempts
        self._is_retryable = is_retryable
        self._retry_delay_ms = retry_delay_ms
        self._max_delay_ms = max(1, protocol.lease_ms // 2)
        self._grace_s = unknown_actor_grace_ms / 1000
        self._clock = clock
        #: Set when a handler found the broker unavailable; :meth:`check_broker` clears it.
        self.broker_unavailable = False
        # (due, tiebreak, entry, whether it consumes an attempt): entries waiting to go back.
        self._held: list[tuple[float, int, BufferEntry, bool]] = []
        self._held_lock = threading.Lock()
        self._order = itertools.count()
        # Actor -> (first, last) time an entry for it was found undeclared, in this episode.
        self._unknown: dict[str, tuple[float, float]] = {}

    def settle(self, batch: Iterable[Completion]) -> tuple[int, int]:
        """Ack, requeue, dead-letter or release each completion; (acked, failed) counts."""
        failed = 0
        succeeded: list[BufferEntry] = []
        not_started: list[BufferEntry] = []
        cancelled: list[BufferEntry] = []
        for entry, error in batch:
            if error is None:
                succeeded.append(entry)
            elif isinstance(error, NotStarted):
                not_started.append(entry)
            elif isinstance(error, EntryCancelled):
                cancelled.append(entry)
            else:
                self._settle_failure(entry, error)
                failed += 1
        self.release(not_started)
        self.drop_cancelled(cancelled)
        if not succeeded:
            return 0, failed
        try:
            self._buffer.ack_entries(succeeded)
        except Exception:
            logger.warning(
                "mollifier.drain_error acking %d entries (they stay DRAINING until their lease expires)",
                len(succeeded),
                exc_info=True,
            )
            return 0, failed + 1
        self._record_acked(succeeded)
        return len(succeeded), failed

    def settle_alone(self, completion: Completion) -> None:
        """Settle one entry from a handler thread, after the tick gave up waiting for it."""
        entry, error = completion
        if isinstance(error, NotStarted):
            self.release([entry])
            return
        if isinstance(error, EntryCancelled):
            self.drop_cancelled([entry])
            return
        try:
            if error is None:
                self._buffer.ack(entry.message_id, org_id=entry.org_id, env_id=entry.env_id)
                self._record_acked([entry])
            else:
                self._settle_failure(entry, error, hold=False)
        except Exception:
            logger.warning(
                "mollifier.drain_error settling %r after shutdown", entry.message_id, exc_info=True
            )

    def drop_cancelled(self, entries: Sequence[BufferEntry]) -> None:
        """Count entries cancelled before their broker write, and remove what is left of them
        (an operator's cancel removed them already; a pending abort did not)."""
        if not entries:
            return
        for entry in entries:
            logger.info(
                "mollifier.cancelled message_id=%r org_id=%r env_id=%r: not enqueued",
                entry.message_id,
                entry.org_id,
                entry.env_id,
            )
        self._telemetry.record_drained(DrainResultKind.CANCELLED, len(entries))
        try:
            self._buffer.ack_entries(entries)
        except Exception:
            logger.warning(
                "mollifier.drain_error removing %d cancelled entries (they stay DRAINING until "
                "their lease expires)",
                len(entries),
                exc_info=True,
            )

    def check_broker(self) -> None:
        """Raise :class:`BrokerUnavailableError` once after a handler found the broker
        unavailable, so the drainer's loop backs off as after a failed tick.
        """
        if self.broker_unavailable:
            self.broker_unavailable = False
            raise BrokerUnavailableError(
                "drain handlers could not reach the broker; entries given back untried"
            )

    def settle_due(self, *, everything: bool = False) -> None:
        """Give back the held entries whose delay is over (all of them when ``everything``)."""
        now = self._clock()
        due: list[tuple[float, int, BufferEntry, bool]] = []
        with self._held_lock:
            while self._held and (everything or self._held[0][0] <= now):
                due.append(heapq.heappop(self._held))
        self.release([entry for _, _, entry, consumes in due if not consumes])
        for _, _, entry, consumes in due:
            if consumes:
                try:
                    self._buffer.requeue(entry.message_id, org_id=entry.org_id, env_id=entry.env_id)
                except Exception:
                    logger.warning(
                        "mollifier.drain_error requeueing %r (it stays DRAINING until its lease expires)",
                        entry.message_id,
                        exc_info=True,
                    )

    @property
    def held(self) -> int:
        """Entries waiting for their retry delay."""
        return len(self._held)

    def _hold(self, entry: BufferEntry, delay_ms: int, *, consumes: bool) -> None:
        with self._held_lock:
            heapq.heappush(self._held, (self._clock() + delay_ms / 1000, next(self._order), entry, consumes))

    def _within_grace(self, error: UnknownDestinationError) -> bool:
        """Whether entries for the error's actor are still in their grace (logged once per episode)."""
        now = self._clock()
        first, last = self._unknown.get(error.actor_name, (now, now))
        if now - last > self._grace_s or first == now:
            first = now
            logger.warning(
                "mollifier.unknown_actor %r is not declared by this worker: its entries are retried "
                "for up to %d ms (a deploy rolling out), then dead-lettered. If no version of this "
                "app declares it, another app shares this key_prefix: give each app its own. %s",
                error.actor_name,
                self._grace_s * 1000,
                error,
            )
        self._unknown[error.actor_name] = (first, now)
        return now - first < self._grace_s

    def _settle_failure(self, entry: BufferEntry, error: BaseException, *, hold: bool = True) -> None:
        """Give back, requeue or dead-letter after a handler error (logged if the buffer call
        itself fails). ``hold``: False gives back or requeues at once, without a delay.
        """
        if is_unavailable(error):
            if not self.broker_unavailable:
                logger.warning(
                    "mollifier.broker_unavailable %r went back untried (no attempt counted); the "
                    "drainer backs off. %s: %s",
                    entry.message_id,
                    type(error).__name__,
                    error,
                )
            self.broker_unavailable = True
            self.release([entry])
            return
        try:
            if isinstance(error, UnknownDestinationError) and self._within_grace(error):
                if hold and self._retry_delay_ms > 0:
                    self._hold(entry, min(self._retry_delay_ms, self._max_delay_ms), consumes=False)
                else:
                    self.release([entry])
                self._telemetry.record_drained(DrainResultKind.REQUEUED)
                return
            retryable = not isinstance(error, UndeliverableEntryError) and self._retryable(error)
            if retryable and entry.attempts + 1 < self.max_attempts:
                if hold and self._retry_delay_ms > 0:
                    delay_ms = retry_delay_ms(self._retry_delay_ms, entry.attempts, self._max_delay_ms)
                    self._hold(entry, delay_ms, consumes=True)
                else:
                    self._buffer.requeue(entry.message_id, org_id=entry.org_id, env_id=entry.env_id)
                kind, level, event = DrainResultKind.REQUEUED, logging.WARNING, "mollifier.drain_retry"
            else:
                self._buffer.fail(
                    entry.message_id,
                    code=type(error).__name__,
                    message=str(error),
                    org_id=entry.org_id,
                    env_id=entry.env_id,
                )
                kind, level, event = DrainResultKind.FAILED, logging.ERROR, "mollifier.drain_failed"
        except Exception:
            logger.warning(
                "mollifier.drain_error settling %r (it stays DRAINING until its lease expires)",
                entry.message_id,
                exc_info=True,
            )
            return
        logger.log(
            level,
            "%s message_id=%r org_id=%r env_id=%r attempts=%d: %s: %s",
            event,
            entry.message_id,
            entry.org_id,
            entry.env_id,
            entry.attempts + 1,
            type(error).__name__,
            error,
            # The traceback once, when the entry is given up on.
            exc_info=error if kind is DrainResultKind.FAILED else None,
        )
        self._telemetry.record_drained(kind)

    def release(self, entries: Sequence[BufferEntry]) -> None:
        if not entries:
            return
        try:
            self._buffer.release(entries)
        except Exception:
            logger.warning(
                "mollifier.drain_error giving back %d entries not handled before the stop "
                "(they stay DRAINING until their lease expires)",
                len(entries),
                exc_info=True,
            )

    def _retryable(self, error: BaseException) -> bool:
        try:
            return self._is_retryable(error)
        except Exception:
            logger.warning("mollifier.drain_error in is_retryable; retrying", exc_info=True)
            return True

    def _record_acked(self, entries: Sequence[BufferEntry]) -> None:
        self._telemetry.record_drained(DrainResultKind.ACKED, len(entries))
        now_ms = time.time() * 1000
        log = logger.isEnabledFor(logging.INFO)
        for entry in entries:
            age_ms = max(0.0, now_ms - entry.created_at.timestamp() * 1000)
            self._telemetry.record_time_in_buffer(age_ms)
            if log:
                logger.info(
                    "mollifier.drained message_id=%r org_id=%r env_id=%r attempts=%d age_ms=%d sha256=%s",
                    entry.message_id,
                    entry.org_id,
                    entry.env_id,
                    entry.attempts,
                    age_ms,
                    hashlib.sha256(entry.payload).hexdigest(),
                )
