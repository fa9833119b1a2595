"""Settling what the handlers did: ack successes in one call, requeue or dead-letter failures,
give back entries whose handler never started.

A failure is classified first (:mod:`.failures`). The broker unavailable: the entry goes back
untried at once, no attempt consumed, and the drainer backs off. An actor or queue this worker
does not declare: the entry goes back untried after a delay, for a grace period (a rolling deploy),
then is dead-lettered. Any other error: the entry is requeued (one attempt consumed) after a
per-entry delay, doubling per attempt, until ``max_attempts``. A delayed entry stays DRAINING
under this drainer's lease meanwhile, so a crash only delays it until the lease expires.

Every call names the owner token of the pop that leased the entry: when the lease passed to
another drainer meanwhile, the call is refused and counted (``drained{result=stale}``) instead of
acking or failing what that drainer holds now. An ack that fails (Redis down) is retried on the
next loop iterations, within the lease: the entries are not delivered twice once Redis is back.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from ..buffer.core import STALE_OWNER
from ..buffer.drain_protocol import DrainProtocol
from ..errors import BrokerUnavailableError, EntryCancelled, UndeliverableEntryError, UnknownDestinationError
from ..models import BufferEntry
from ..settings import default_of
from ..telemetry import DrainResultKind, Outcome, Reason, Telemetry
from .acks import Acks
from .failures import RETRY_DELAY_MS, is_unavailable, retry_delay_ms
from .handler_pool import Completion, NotStarted
from .leases import LeaseKeeper

__all__ = ["UNKNOWN_ACTOR_GRACE_MS", "Settler"]

logger = logging.getLogger(__name__)

#: How long entries for an undeclared actor or queue are retried before dead-lettering, in ms.
UNKNOWN_ACTOR_GRACE_MS: int = default_of("drain_unknown_actor_grace_ms")


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
      leases: The drainer's leases, given up as entries are settled. Defaults to a keeper of
        its own (renewed by nobody).
      wake: Called by :meth:`settle_due` after entries went back untried (queued work again).
        Defaults to nothing.
      declared_elsewhere: Whether a live drainer of the fleet declares an actor this one does
        not (:class:`~.actor_registry.ActorRegistry`): an entry for it goes back untried, outside
        the grace. Defaults to "no".
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
        leases: LeaseKeeper | None = None,
        wake: Callable[[], None] = lambda: None,
        declared_elsewhere: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._buffer = protocol
        self._declared_elsewhere = declared_elsewhere
        self._leases = leases if leases is not None else LeaseKeeper(protocol)
        self._wake = wake
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
        self._acks = Acks(protocol, telemetry=telemetry, leases=self._leases, clock=clock)
        # Set when entries went back untried: queued work again, for idle drainers to wake to.
        self._gave_back = False

    def settle(self, batch: Iterable[Completion]) -> tuple[int, int]:
        """Ack, requeue, dead-letter or release each completion; (acked, failed) counts."""
        failed = 0
        succeeded: list[BufferEntry] = []
        give_back: list[BufferEntry] = []
        cancelled: list[BufferEntry] = []
        for entry, error in batch:
            if error is None:
                succeeded.append(entry)
            elif isinstance(error, NotStarted):
                give_back.append(entry)
            elif isinstance(error, EntryCancelled):
                cancelled.append(entry)
            else:
                failed += 1
                if self._settle_failure(entry, error):
                    give_back.append(entry)
        # In one call, so they go back to the head of their queues in the order popped: one by
        # one, each pushed before the last, a broker outage reversed every batch.
        self.release(give_back, last_chance=False)
        self.drop_cancelled(cancelled)
        if not succeeded:
            return 0, failed
        acked = self._acks.ack_or_keep(succeeded)
        return (0, failed + 1) if acked is None else (acked, failed)

    def record_moved(self, entries: Sequence[BufferEntry], *, gate_counts: bool) -> None:
        """Count entries the drainer moved onto the broker in Redis (removed there already), and,
        when the gate is on (``gate_counts``), the decision each would have met on the way."""
        if entries:
            self._acks.record_acked(entries)
        if entries and gate_counts:
            self._telemetry.record_decision(
                Outcome.PASS_THROUGH, Reason.DRAINED, enrolled=False, count=len(entries)
            )

    @property
    def unacked(self) -> int:
        """Entries whose handler succeeded and whose ack is still to be retried."""
        return self._acks.pending

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
                answer = self._buffer.ack(
                    entry.message_id, org_id=entry.org_id, env_id=entry.env_id, owner=entry.lease_owner
                )
                self._leases.drop([entry])
                if answer == STALE_OWNER:
                    self._acks.record_stale([entry])
                else:
                    self._acks.record_acked([entry])
            elif self._settle_failure(entry, error, hold=False):
                self.release([entry])
        except Exception:
            self._leases.drop([entry])
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
        finally:
            # Renewed forever otherwise (renew.lua does not report a gone entry), and a failed
            # removal above must let the lease expire rather than hold the entry ten leases.
            self._leases.drop(entries)

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
        """Give back the held entries whose delay is over (all of them when ``everything``, at
        the drainer's stop), retry failed acks, and wake idle drainers if anything went back.
        """
        now = self._clock()
        due: list[tuple[float, int, BufferEntry, bool]] = []
        with self._held_lock:
            while self._held and (everything or self._held[0][0] <= now):
                due.append(heapq.heappop(self._held))
        self.release([entry for _, _, entry, consumes in due if not consumes], last_chance=everything)
        for _, _, entry, consumes in due:
            if consumes:
                try:
                    self._requeue(entry)
                except Exception:
                    logger.warning("mollifier.drain_error requeueing %r", entry.message_id, exc_info=True)
                    if not everything:
                        self._again([entry], consumes=True)
                        continue
                self._leases.drop([entry])
        if self._acks.pending:
            self._acks.retry(last_chance=everything)
        if self._gave_back:
            self._gave_back = False
            self._wake()

    @property
    def held(self) -> int:
        """Entries waiting for their retry delay."""
        return len(self._held)

    def _hold(self, entry: BufferEntry, delay_ms: int, *, consumes: bool) -> None:
        with self._held_lock:
            heapq.heappush(self._held, (self._clock() + delay_ms / 1000, next(self._order), entry, consumes))

    def _for_another(self, error: UnknownDestinationError) -> bool:
        if self._declared_elsewhere is None or error.actor_name is None:
            return False
        try:
            return self._declared_elsewhere(error.actor_name)
        except Exception:
            return False

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

    def _settle_failure(self, entry: BufferEntry, error: BaseException, *, hold: bool = True) -> bool:
        """Requeue or dead-letter after a handler error (logged if the buffer call itself fails),
        or True: the caller gives it back untried. ``hold``: False requeues at once, no delay.
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
            return True
        if isinstance(error, UnknownDestinationError) and self._for_another(error):
            return True  # another fleet's actor (workers split by module): no attempt spent
        try:
            if isinstance(error, UnknownDestinationError) and self._within_grace(error):
                self._telemetry.record_drained(DrainResultKind.REQUEUED)
                if hold and self._retry_delay_ms > 0:
                    self._hold(entry, min(self._retry_delay_ms, self._max_delay_ms), consumes=False)
                    return False
                return True
            retryable = not isinstance(error, UndeliverableEntryError) and self._retryable(error)
            if retryable and entry.attempts + 1 < self.max_attempts:
                if hold and self._retry_delay_ms > 0:
                    delay_ms = retry_delay_ms(self._retry_delay_ms, entry.attempts, self._max_delay_ms)
                    self._hold(entry, delay_ms, consumes=True)
                    kind = DrainResultKind.REQUEUED
                else:
                    kind = self._requeue_now(entry, last_chance=not hold)
                level, event = logging.WARNING, "mollifier.drain_retry"
            else:
                self._leases.drop([entry])
                kind, level, event = DrainResultKind.FAILED, logging.ERROR, "mollifier.drain_failed"
                if not self._buffer.fail(
                    entry.message_id,
                    code=type(error).__name__,
                    message=_storable(str(error)),
                    org_id=entry.org_id,
                    env_id=entry.env_id,
                    owner=entry.lease_owner,
                ):
                    self._refused("dead-lettering", entry)
                    kind = DrainResultKind.STALE  # the new holder of the lease settles it
        except Exception:
            self._leases.drop([entry])
            logger.warning(
                "mollifier.drain_error settling %r (it stays DRAINING until its lease expires)",
                entry.message_id,
                exc_info=True,
            )
            return False
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
        return False

    def _requeue_now(self, entry: BufferEntry, *, last_chance: bool) -> DrainResultKind:
        """Requeue without a delay (``STALE`` when refused); one that meets a Redis error is held and
        tried again from :meth:`settle_due`, unless this is its last chance (then it raises)."""
        try:
            requeued = self._requeue(entry)
        except Exception:
            if last_chance:
                raise
            logger.warning("mollifier.drain_error requeueing %r", entry.message_id, exc_info=True)
            self._again([entry], consumes=True)
            return DrainResultKind.REQUEUED
        self._leases.drop([entry])
        return DrainResultKind.REQUEUED if requeued else DrainResultKind.STALE

    def _requeue(self, entry: BufferEntry) -> bool:
        """Requeue ``entry``; False (logged) when its lease passed to another drainer."""
        at = {"org_id": entry.org_id, "env_id": entry.env_id, "owner": entry.lease_owner}
        return self._buffer.requeue(entry.message_id, **at) or self._refused("requeueing", entry)

    def _refused(self, doing: str, entry: BufferEntry) -> bool:
        logger.info(
            "mollifier.lease_lost %s %r refused: its lease passed to another drainer (or it is gone)",
            doing,
            entry.message_id,
        )
        return False

    def release(self, entries: Sequence[BufferEntry], *, last_chance: bool = True) -> None:
        """Give entries back untried (their handler never ran, or could not reach the broker).
        On a Redis error they stay held (leases renewed) and go back on a later :meth:`settle_due`,
        unless it was the ``last_chance``: an outage must not count as an expiry of their lease.
        """
        if not entries:
            return
        try:
            self._gave_back |= self._buffer.release(entries) > 0
        except Exception:
            logger.warning("mollifier.drain_error giving back %d entries", len(entries), exc_info=True)
            if not last_chance:
                self._again(entries, consumes=False)
                return
        self._leases.drop(entries)

    def _again(self, entries: Sequence[BufferEntry], *, consumes: bool) -> None:
        """Hold entries whose requeue or release failed, to try again after a retry delay."""
        for entry in entries:
            self._hold(entry, min(max(1, self._retry_delay_ms), self._max_delay_ms), consumes=consumes)

    def _retryable(self, error: BaseException) -> bool:
        try:
            return self._is_retryable(error)
        except Exception:
            logger.warning("mollifier.drain_error in is_retryable; retrying", exc_info=True)
            return True


def _storable(text: str) -> str:
    """``text`` as Redis can store it: an error's text may hold lone surrogates (bytes decoded
    with ``surrogateescape``: paths, environment values), which the client refuses to encode,
    and the entry was then never dead-lettered with its error."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
