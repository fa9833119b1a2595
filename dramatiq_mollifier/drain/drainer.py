"""``MollifierDrainer``: puts buffered messages back on the broker, fairly.

One tick (:meth:`MollifierDrainer.run_once`) reads a sliding window of the orgs with work, picks
one env per org round-robin (weights: :mod:`.turns`), pops up to a batch from each and runs the
handler on a pool of daemon threads; popped entries not yet settled never outnumber the pool.
:meth:`~MollifierDrainer.start` and :meth:`~MollifierDrainer.stop` run ticks in a background
thread whose every sleep waits on one ``threading.Event``, so ``stop`` wakes it at once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator

from ..buffer import MollifierBuffer
from ..buffer.drain_protocol import DrainProtocol
from ..models import BufferEntry
from ..settings import MAX_IN_FLIGHT, default_of
from ..telemetry import Telemetry
from .drain_loop import DrainLoop
from .failures import MAX_BACKOFF_MS, backoff_ms
from .handler_pool import Completion, DrainHandler, HandlerPool
from .hooks import DrainHooks
from .housekeeping import Housekeeping
from .idle import IdleWait
from .leases import LeaseKeeper
from .pace import Claim, DrainPace
from .redis_move import STOP_DONE, STOP_FAILED, STOP_NOT_MOVABLE, STOP_UNKNOWN_ID, RedisMove
from .rotation import OrgEnvRotation
from .settling import Settler
from .tick import DrainResult, Tick
from .turns import WeightedTurn, runnable_envs

__all__ = ["MAX_BACKOFF_MS", "DrainHandler", "DrainResult", "MollifierDrainer", "backoff_ms"]

logger = logging.getLogger(__name__)

#: Orgs whose envs one round trip reads as a tick goes through its window. With 2,000 orgs of
#: small backlogs, reading the envs of the whole window (500 orgs) for each tick the budget ended
#: after an org or two cost 60 SMEMBERS per drained message.
ENVS_READ_CHUNK = 32


class MollifierDrainer(DrainLoop):
    """Drains a :class:`MollifierBuffer` through ``handler``, fairly across orgs and their envs.

    The defaults named ``drain_*`` are those of :class:`~dramatiq_mollifier.settings.MollifierSettings`
    (read from there, written once), so a drainer built directly drains as the settings do.

    Parameters:
      buffer: The buffer to drain.
      handler: Called with each popped entry; returning means success (the entry is acked),
        raising means the attempt failed. Raise :class:`UndeliverableEntryError` to dead-letter
        the entry at once.
      concurrency: The most handlers running at once (fewer while they keep the interpreter
        busy: see :class:`~dramatiq_mollifier.parallelism.AdaptiveParallelism`), which also
        bounds entries popped but not yet settled. Defaults to ``drain_concurrency``'s.
      max_attempts: Handler attempts before an entry is dead-lettered (``drain_max_attempts``'s).
      max_orgs_per_tick: Orgs visited per tick. Defaults to ``drain_max_orgs_per_tick``'s.
      poll_interval_ms: The sleep after a tick that drained nothing (``drain_poll_interval_ms``'s).
      batch_size: Entries popped from one env per tick. Defaults to ``drain_batch_size``'s.
      is_retryable: Whether a handler exception may be retried. Defaults to every exception.
      telemetry: Where drain metrics go. Defaults to instruments on the global meter provider.
      reclaim_interval_ms: How often ``run_once`` reclaims expired leases: by default a quarter lease, ≤ 1 s.
      retry_delay_ms: The wait before a second attempt, doubling per attempt (``drain_retry_delay_ms``'s);
        broker unavailability consumes no attempt (see :mod:`.settling`).
      unknown_actor_grace_ms: How long entries for an undeclared actor or queue are retried before
        they are dead-lettered. Defaults to ``drain_unknown_actor_grace_ms``'s.
      pace: The fleet-wide drain budget (see :class:`~dramatiq_mollifier.drain.pace.DrainPace`).
        Defaults to None: no budget, every popped entry goes to the handler at once.
      batch_max_bytes: Payload bytes a pop returns at most, bar its first (``drain_batch_max_bytes``'s).
      idle_wait_ms: With nothing queued, the drainer blocks on the buffer's wake-up list this
        long at most instead of polling (see :mod:`.idle`); 0 polls. ``drain_idle_wait_ms``'s.
      max_in_flight: Entries popped and not yet settled, at most (at least ``concurrency``, at most
        :data:`~dramatiq_mollifier.settings.MAX_IN_FLIGHT`); a refill waits for half of them, so
        it is also the size of the drainer's round trips. Defaults to ``concurrency``.
      sleep: Waits the given milliseconds between ticks. Defaults to waiting on the stop event;
        tests inject it to observe the loop's waits.
      hooks: The operator controls (pauses, weights, fleet gauges, cancel check); see
        :class:`~dramatiq_mollifier.drain.hooks.DrainHooks`. Defaults to none.
      move: Moves chunks onto a ``RedisBroker`` inside Redis, spending ``pace``'s claims (see
        :mod:`.redis_move`). Defaults to None: every chunk is popped and goes to the handler.
    """

    def __init__(
        self,
        buffer: MollifierBuffer,
        handler: DrainHandler,
        *,
        concurrency: int = default_of("drain_concurrency"),
        max_attempts: int = default_of("drain_max_attempts"),
        max_orgs_per_tick: int = default_of("drain_max_orgs_per_tick"),
        poll_interval_ms: int = default_of("drain_poll_interval_ms"),
        batch_size: int = default_of("drain_batch_size"),
        is_retryable: Callable[[BaseException], bool] | None = None,
        telemetry: Telemetry | None = None,
        reclaim_interval_ms: int | None = None,
        retry_delay_ms: int = default_of("drain_retry_delay_ms"),
        unknown_actor_grace_ms: int = default_of("drain_unknown_actor_grace_ms"),
        pace: DrainPace | None = None,
        batch_max_bytes: int = default_of("drain_batch_max_bytes"),
        idle_wait_ms: int = default_of("drain_idle_wait_ms"),
        max_in_flight: int | None = None,
        sleep: Callable[[int], object] | None = None,
        hooks: DrainHooks | None = None,
        move: RedisMove | None = None,
    ) -> None:
        for name, value in (
            ("concurrency", concurrency),
            ("max_attempts", max_attempts),
            ("max_orgs_per_tick", max_orgs_per_tick),
            ("poll_interval_ms", poll_interval_ms),
            ("batch_size", batch_size),
            ("batch_max_bytes", batch_max_bytes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        self._buffer = DrainProtocol(buffer)
        self._handler = handler
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.poll_interval_ms = poll_interval_ms
        self.batch_size = batch_size
        self.batch_max_bytes = batch_max_bytes
        self.max_in_flight = max(concurrency, max_in_flight or concurrency)
        if self.max_in_flight > MAX_IN_FLIGHT:
            raise ValueError(f"max_in_flight must be at most {MAX_IN_FLIGHT}, got {self.max_in_flight!r}")
        self._refill = max(1, self.max_in_flight // 2)
        self._telemetry = telemetry or Telemetry()
        self._leases = LeaseKeeper(self._buffer)
        self._hooks = hooks or DrainHooks()
        # With slot groups the accepts push to their group's wake-up list: idle drainers poll.
        idle_wait_ms = idle_wait_ms if buffer.slot_groups == 0 else 0
        self._idle_wait = IdleWait(buffer.client, key=buffer.keys.drain_wake, wait_ms=idle_wait_ms)
        self._deep_idle = self._woken = False
        self._settler = Settler(
            self._buffer,
            telemetry=self._telemetry,
            max_attempts=max_attempts,
            is_retryable=is_retryable or (lambda exc: True),
            retry_delay_ms=retry_delay_ms,
            unknown_actor_grace_ms=unknown_actor_grace_ms,
            leases=self._leases,
            # Entries given back untried: another drainer may take them (one that declares
            # their actor, say), so idle ones wake.
            wake=self._idle_wait.signal,
            declared_elsewhere=self._hooks.declared_elsewhere,
        )
        self._housekeeping = Housekeeping(
            self._buffer,
            buffer,
            telemetry=self._telemetry,
            reclaim_interval_ms=reclaim_interval_ms,
            leases=self._leases,
            report_gauges=self._hooks.report_gauges,
            # Their drainer died holding their budget slots: give them back at once.
            give_back=None if pace is None else pace.give_back,
        )
        self.reclaim_interval_ms = self._housekeeping.reclaim_interval_ms
        self._sleep = sleep or self._wait
        self._pace = pace
        self._move = move
        self._rotation = OrgEnvRotation(max_orgs_per_tick)
        self._turn = WeightedTurn()
        self._pool: HandlerPool | None = None
        self._idle = True
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def rotation(self) -> OrgEnvRotation:
        """The org/env cursors (read them, do not drive them)."""
        return self._rotation

    @property
    def running(self) -> bool:
        """Whether the background loop is alive."""
        return self._thread is not None and self._thread.is_alive()

    # One tick -------------------------------------------------------------------------------
    def run_once(self) -> DrainResult:
        """Retry failed acks, reclaim expired leases (throttled), then drain one window of orgs, one env each.

        Raises when the orgs or their envs cannot be read (Redis down); any other buffer error is
        counted as a failure of the org or env it concerns. Not re-entrant: one caller at a time.
        """
        # Own failed acks (and leases, in housekeeping) before reclaiming: no second delivery.
        self._settler.settle_due()
        self._housekeeping.run(time.monotonic(), idle=self._deep_idle)
        # After a block, from the first org: one command instead of two.
        cursor = None if self._deep_idle else self._rotation.org_cursor
        window = self._buffer.org_window(cursor, self._rotation.max_orgs)
        tick = Tick()
        pool = self._pool
        if pool is None or pool.abandoned:
            pool = self._pool = HandlerPool(self.concurrency, self._handler, self._settler.settle_alone)
        elif self._idle:
            # The sleep after an idle tick says nothing about how the handlers use the CPU.
            pool.parallelism.restart()
        rules = self._hooks.rules()
        try:
            for org_id, envs in self._orgs_and_envs(self._rotation.pick_orgs(window)):
                if self._stopping.is_set():
                    break
                if envs is None:
                    logger.warning("mollifier.drain_error listing envs of org %r", org_id)
                    tick.failed += 1
                    continue
                runnable = runnable_envs(rules, org_id, envs)
                visit = functools.partial(self._visit, pool, tick, org_id, runnable)
                if runnable and not self._turn.take(org_id, rules.weight(org_id), visit):
                    break
                if tick.paced:
                    # The budget ran out before this org got anything: it goes first next time.
                    break
                self._rotation.visited(org_id)
                if tick.spent:  # this org got the last of the budget: the next goes first next tick
                    break
        finally:
            self._collect(pool, tick, until=0)
            self._idle = tick.drained + tick.failed == 0 and not (tick.paced or tick.spent)
        return tick.result(empty=not window)

    def _orgs_and_envs(self, orgs: list[str]) -> Iterator[tuple[str, list[str] | None]]:
        """Each org of the window with its envs, read :data:`ENVS_READ_CHUNK` orgs at a time: a tick
        the budget ends after a few orgs does not read the envs of the whole window."""
        for start in range(0, len(orgs), ENVS_READ_CHUNK):
            chunk = orgs[start : start + ENVS_READ_CHUNK]
            yield from zip(chunk, self._buffer.envs_of(chunk), strict=True)

    def _visit(self, pool: HandlerPool, tick: Tick, org_id: str, envs: list[str]) -> int | None:
        """One env visit of a turn: entries popped, -1 if paced before any, None if abandoned."""
        if tick.spent:  # a weighted org's next visit, the budget used up: resumed next tick
            tick.paced = True
            return -1
        popped = tick.popped
        env_id = self._rotation.pick_env(org_id, envs)
        if not self._drain_env(pool, tick, org_id, env_id):
            return None
        if tick.paced:  # the org keeps its turn, and so does this env
            self._rotation.keep_env(org_id, envs, env_id)
            return -1
        return tick.popped - popped

    def _drain_env(self, pool: HandlerPool, tick: Tick, org_id: str, env_id: str) -> bool:
        """Pop up to a batch from the env, never past the free slots. False if abandoned."""
        remaining = self.batch_size
        move = self._move if self._move is not None and self._move.active else None
        while remaining > 0 and not self._stopping.is_set() and not self._settler.broker_unavailable:
            # Wait for a few free slots rather than one: fewer, larger pops (and acks).
            wanted = min(remaining, self._refill)
            if not self._collect(pool, tick, until=self.max_in_flight - wanted):
                return False
            limit = min(remaining, self.max_in_flight - pool.in_flight)
            claim = self._claim(tick, limit, own=pool.in_flight, moves=move is not None)
            if claim is not None:
                if claim.granted == 0:
                    # Once an org got part of a batch, it had its turn: the next org goes first.
                    tick.paced = remaining == self.batch_size
                    return True
                # Fewer slots than asked: the budget is used up; claiming again now would get a
                # slot or two (round trips for a message or two). The tick ends after this pop,
                # unless the env leaves some of them unused (freed again): the next org takes them.
                tick.spent, limit = claim.granted < limit, claim.granted
                if move is not None:  # a chunk moved in Redis (see redis_move), not popped
                    moved = move.try_move(org_id, env_id, limit, claim)
                    if self._pace is not None:
                        self._pace.refund(claim, used=moved.size)
                    self._settler.record_moved(moved.entries, gate_counts=move.gate_counts)
                    tick.add_moved(moved.size, failed=moved.stop == STOP_FAILED)
                    tick.spent = tick.spent and moved.size == limit
                    if moved.stop == STOP_FAILED or (
                        moved.stop == STOP_DONE and (tick.spent or moved.size < limit)
                    ):
                        return True
                    if moved.stop == STOP_NOT_MOVABLE or (moved.stop == STOP_UNKNOWN_ID and not moved.size):
                        move = None  # the pop takes the rest of this visit
                    remaining -= moved.size
                    continue
            entries: list[BufferEntry] | None = None
            try:
                entries = self._buffer.pop_many(org_id, env_id, limit, max_bytes=self.batch_max_bytes)
                self._leases.hold(entries)
            except Exception:
                logger.warning("mollifier.drain_error popping org %r env %r", org_id, env_id, exc_info=True)
                tick.failed += 1
            if self._pace is not None and claim is not None:
                self._pace.try_bind(claim, [entry.message_id for entry in entries or ()])
            if entries is None:
                return True
            if self._hooks.popped is not None:
                self._hooks.popped(entries)
            pool.submit(entries)
            tick.popped += len(entries)
            if len(entries) < limit:
                tick.spent = False  # the env is empty: its unused slots were freed (bind)
                return True
            if tick.spent:
                return True
            remaining -= len(entries)
        return True

    def _collect(self, pool: HandlerPool, tick: Tick, *, until: int) -> bool:
        """Settle completions (together: one ack round trip) once at most ``until`` entries are
        in flight. False if abandoned."""
        done: list[Completion] = []
        try:
            while pool.in_flight > until:
                batch = pool.take(pool.in_flight - until)
                done += batch
                pool.in_flight -= len(batch)
                if pool.abandoned:
                    return False
            return True
        finally:
            if done:
                if self._pace is not None:
                    # Written messages now count against the budget; what never reached the
                    # broker (a failure, an audited dual_write copy) gives its slot back at once.
                    lands = [(e.message_id, error is None and e.mode != "dual_write") for e, error in done]
                    self._pace.landed([i for i, ok in lands if ok], [i for i, ok in lands if not ok])
                drained, failed = self._settler.settle(done)
                tick.drained, tick.failed = tick.drained + drained, tick.failed + failed

    # Pacing ---------------------------------------------------------------------------------
    def _claim(self, tick: Tick, wanted: int, *, own: int, moves: bool) -> Claim | None:
        """Up to ``wanted`` slots of the budget (``own``: this drainer's on their way; ``moves``:
        it moves in Redis, see :meth:`DrainPace.claim`); None: no pace."""
        if self._pace is None:
            return None
        claim = self._pace.try_claim(wanted, own=own, moves=moves)
        if claim is not None:
            self._telemetry.record_outstanding(claim.in_use, budget=claim.budget)
            return claim
        tick.failed += 1
        return Claim(0, 0, "")

    # The loop's thread ----------------------------------------------------------------------
    def start(self) -> None:
        """Run ticks in a background thread until :meth:`stop`. Does nothing if already running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                if not self._stopping.is_set():
                    return
                # A stop that ran out of time: its abandoned loop exits after its current call.
                self._thread.join()
            self._stopping = threading.Event()
            self._rotation.reset()
            self._idle_wait.reset()
            self._leases.start()
            self._thread = threading.Thread(target=self._loop, name="mollifier-drainer", daemon=True)
            self._thread.start()

    def stop(self, timeout_ms: int = default_of("drain_shutdown_timeout_ms")) -> bool:
        """Wake the loop, let in-flight handlers finish until the deadline, and end the loop.

        Returns True when the loop ended within ``timeout_ms`` (and when it never started).
        Entries whose handler is still running at the deadline keep their lease: a handler that
        returns later still acks its entry, and one that never does is reclaimed by any drainer.
        """
        with self._lock:
            thread = self._thread
            self._stopping.set()
            self._idle_wait.interrupt()
            if self._pool is not None:
                self._pool.stop_starting()
            if thread is not None:
                thread.join(max(0, timeout_ms) / 1000)
            stopped = thread is None or not thread.is_alive()
            pool = self._pool
            if pool is not None:
                if not stopped:
                    pool.abandon()
                pool.close()
                self._pool = None
            if stopped:
                self._settler.settle_due(everything=True)
                self._leases.stop()
                self._thread = None
                self._stopping = threading.Event()
            else:
                logger.warning("mollifier.drainer did not stop within %d ms", timeout_ms)
            return stopped
