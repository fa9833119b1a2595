"""The local trip evaluator (``trip_evaluator=local``): count in this process, fold in the background.

A send that is not diverted costs no Redis call. Each process counts its sends per env and a
background thread adds the counts to the fleet's windows every ``trip_fold_interval_ms`` in one
script call (:meth:`~dramatiq_mollifier.buffer.MollifierBuffer.fold_trip_counts`), learning
from the reply each env's window count, whether it is held (tripped) and whether it has entries
in the buffer (sticky). What the gate does with a send, without any I/O:

- an env this process has seen diverting (tripped or backlogged) goes to the exact, fused
  script (count and write in one call), until that script finds it neither;
- an env whose estimated window count (the fleet's count at the last fold, plus this process's
  sends not yet folded) goes over the threshold is folded at once, in the send, and diverted
  if the fleet's window says so: a process never lets more than the threshold through alone;
  so is one whose estimate plus the other processes' sends at their last pace goes over it
  (:class:`~dramatiq_mollifier.gate.window_view.WindowView`);
- anything else passes.

Nothing is shared across a fork: a child starts with no counts, no knowledge and no thread
(the parent folds what it counted). See the README ("Trip evaluators") for the bounds.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol

import redis

from ..breaker import CircuitBreaker, is_outage
from ..models import Tenant, TripDecision, TripWindow
from .forks import ForkMark
from .window_view import WindowView

__all__ = ["FoldBackend", "LocalTrip", "Verdict"]

logger = logging.getLogger(__name__)

#: Envs whose counts and knowledge a process keeps; the idle ones are forgotten when it fills.
MAX_ENVS = 10_000
#: How long the fold thread waits with nothing to fold before it exits (a send restarts it).
IDLE_EXIT_S = 1.0
#: How far apart the folds are while every env this process counts is below half its threshold
#: (and the fleet below half the ceiling): ``trip_fold_interval_ms`` if longer, at most the window.
SLOW_FOLD_INTERVAL_MS = 100
#: How long a send waits for another thread's fold before it fails open: the send path's socket
#: timeout (a fold that takes longer is stuck on Redis).
FOLD_WAIT_MS = 500


class Verdict(enum.Enum):
    """What this process knows about an env for one send."""

    #: Below the threshold as far as this process knows: pass, no Redis call.
    BELOW = "below"
    #: Seen diverting (tripped or backlogged): the exact fused script decides (not counted here).
    DIVERTING = "diverting"
    #: This process's estimate went over the threshold: fold now, then decide (enrolled orgs).
    CROSSED = "crossed"
    #: Tripped as far as this process knows (orgs in shadow mode: log only).
    TRIPPED = "tripped"
    #: The fleet-wide ceiling is over (``trip_global_threshold``).
    GLOBAL = "global"


# Module constants: reading an Enum member off its class costs a descriptor call per send.
_BELOW, _DIVERTING, _CROSSED = Verdict.BELOW, Verdict.DIVERTING, Verdict.CROSSED
_TRIPPED, _GLOBAL = Verdict.TRIPPED, Verdict.GLOBAL


class FoldBackend(Protocol):
    """Where the counts go: the buffer's fold script."""

    def fold_trip_counts(
        self,
        counts: Sequence[tuple[str, str, int]],
        *,
        window_ms: int,
        threshold: int,
        hold_ms: int,
        global_threshold: int = 0,
    ) -> tuple[TripWindow, list[TripWindow]]: ...


class LocalTrip:
    """Per-process trip counts, folded into the fleet's windows off the send path.

    Parameters:
      backend: The fold script.
      window_ms, threshold, hold_ms: The per-env trip settings.
      fold_interval_ms: How often the counts are folded while there are any.
      global_threshold: The fleet-wide ceiling over every env; 0 for none.
      breaker: Shared with the gate: no fold while it is open (the counts are dropped).
      on_error: Called with the exception of a failed background fold.
      clock: Seconds from an arbitrary origin. Defaults to ``time.monotonic``.
    """

    def __init__(
        self,
        *,
        backend: FoldBackend,
        window_ms: int,
        threshold: int,
        hold_ms: int,
        fold_interval_ms: int,
        global_threshold: int = 0,
        breaker: CircuitBreaker,
        on_error: Callable[[Exception], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._trip = {"window_ms": window_ms, "threshold": threshold, "hold_ms": hold_ms}
        self._threshold = threshold
        # An env's estimate at or over this folds every fold_interval_ms, not SLOW_FOLD_INTERVAL_MS.
        self._half = (threshold + 1) // 2
        self._global_half = (global_threshold + 1) // 2
        self._window_s = window_ms / 1000
        self._interval_s = fold_interval_ms / 1000
        slow_ms = max(fold_interval_ms, min(SLOW_FOLD_INTERVAL_MS, window_ms))
        self._slow_s = slow_ms / 1000
        self._spans = {"window_s": self._window_s, "min_s": self._interval_s}
        self._global_threshold = global_threshold
        self._breaker = breaker
        self._on_error = on_error
        self._clock = clock
        self._reset()
        _instances.add(self)

    def _reset(self) -> None:
        """Forget everything: at construction, and in a forked child (the parent's counts,
        knowledge and thread stay with the parent, which folds what it counted)."""
        self._mark = ForkMark()
        self._fork_page = self._mark.page  # read on every count: no call when the page is there
        self._lock = threading.Lock()
        # Held across a fold: folds of one process reach Redis in the order they took their counts,
        # so a fold's reply includes every count this process took before it.
        self._fold_lock = threading.Lock()
        # Folds that met an outage (under the fold lock): a send that waited for one does not fold.
        self._failed_folds = 0
        self._envs: dict[Tenant, WindowView] = {}
        self._fleet = WindowView(self._global_threshold)
        self._running = False
        # Some env's estimate (or the fleet's, under a ceiling) is at half its threshold or more:
        # the fold thread folds every fold_interval_ms rather than every slow interval.
        self._fast = False
        # Wakes the fold thread: an estimate reached half, or sends took a share of the headroom.
        self._hurry = threading.Event()

    def count(self, tenant: Tenant, enrolled: bool) -> Verdict:
        """Count one send of ``tenant`` (unless the fused script will) and say what is known. No I/O."""
        # A fork the hook below did not see (a C-level fork): the page reads 0 in a forked child.
        page = self._fork_page
        if page[0] == 0 if page is not None else self._mark.forked():
            self._reset()
        now = self._clock()
        with self._lock:
            env = self._envs.get(tenant)
            if env is None:
                env = self._add(tenant)
            fleet = self._fleet
            over_ceiling = False
            if self._global_threshold:
                total = fleet.estimate(now)
                over_ceiling = fleet.hold_end > now or total >= self._global_threshold
                if total + 1 >= self._global_half and not self._fast:  # this send counted
                    self._speed_up()
            if enrolled and not over_ceiling and (env.diverting or env.hold_end > now):
                env.diverting = True
                return _DIVERTING
            env.pending += 1
            fleet.pending += 1
            if not self._running:
                self._start()
            if over_ceiling:
                return _GLOBAL
            if env.hold_end > now:
                return _TRIPPED
            # env.estimate(now), written out: this is every send's path
            estimate = (env.fleet if now < env.end else 0) + env.pending + env.in_flight
            if estimate > self._threshold:
                return _CROSSED if enrolled else _TRIPPED
            # The others' sends since the last fold, at their last pace (enrolled orgs: a shadow
            # org's verdict is never checked by a fold), written out: every send's path.
            if (
                enrolled
                and env.others_per_s
                and now < env.end
                and estimate + env.others_per_s * (now - env.at) > self._threshold
            ):
                return _CROSSED  # the fleet is over as far as the others' pace says: fold to know
            if env.pending >= env.hurry_at:
                env.hurried()
                self._hurry.set()
            if estimate >= self._half and not self._fast:
                self._speed_up()
            return _BELOW

    def evaluate(self, tenant: Tenant) -> TripDecision:
        """Fold ``tenant``'s counts now, in the caller's thread, and say whether it diverts, from
        the fold's reply: held, backlogged or over the threshold (an env seen diverting before
        and now none of these is no longer diverting, as when the fused script finds it so).

        Waits for another thread's fold under way, at most :data:`FOLD_WAIT_MS`, and raises
        ``redis.TimeoutError`` instead of folding when that fold met an outage: sends queued
        behind one another's folds on a stalled Redis each waited their own timeout in turn.
        Raises what the fold raised (the caller records it on the breaker).
        """
        failed_before = self._failed_folds
        if not self._fold_lock.acquire(timeout=FOLD_WAIT_MS / 1000):
            raise redis.TimeoutError("another thread's trip fold in this process has not come back")
        try:
            if self._failed_folds != failed_before:
                raise redis.TimeoutError("the trip fold this send waited for met a Redis outage")
            with self._lock:
                env = self._envs.get(tenant)
                if env is None:
                    env = self._add(tenant)
                batch = [(tenant, env, env.pending)]
                self._take(batch)
            (window,) = self._fold(batch)
            tripped = window.hold_ttl_ms > 0 or window.backlog > 0 or window.count > self._threshold
            if not tripped:  # under the fold lock: a later fold's divert() comes after this
                with self._lock:
                    env.diverting = False
        finally:
            self._fold_lock.release()
        return TripDecision(tripped, window.count)

    def divert(self, tenant: Tenant) -> None:
        """The fused script (or a write for the fleet-wide ceiling) found ``tenant`` diverting."""
        with self._lock:
            env = self._envs.get(tenant)
            if env is None:
                env = self._add(tenant)
            env.diverting = True

    def cool(self, tenant: Tenant, count: int) -> None:
        """The fused script found ``tenant`` neither tripped nor backlogged, its window at ``count``."""
        now = self._clock()
        with self._lock:
            env = self._envs.get(tenant)
            if env is None:
                return
            env.diverting = False
            env.hold_end = float("-inf")
            env.fleet, env.at = count, now
            if env.end <= now:
                env.end = now + self._window_s  # not known: assume the longest (a higher estimate)
            env.arm(self._threshold)

    def flush(self) -> bool:
        """Fold every count now, in the caller's thread; False when there was nothing to fold.

        Errors are reported to ``on_error``, as in the background.
        """
        with self._fold_lock:
            with self._lock:
                batch = [(tenant, env, env.pending) for tenant, env in self._envs.items() if env.pending]
                self._take(batch)
            if batch:
                self._fold_or_report(batch, every_env=True)
        return bool(batch)

    @property
    def fold_interval_s(self) -> float:
        """How long the fold thread waits before its next fold, as things stand: the fold
        interval while some estimate is at half its threshold or more, else the slow one."""
        return self._interval_s if self._fast else self._slow_s

    # Internals ------------------------------------------------------------------------------
    def _add(self, tenant: Tenant) -> WindowView:
        if len(self._envs) >= MAX_ENVS:
            # Kept: envs with counts to fold, and diverting ones (forgotten, a backlogged env's
            # next sends would overtake its backlog until a fold learnt it again).
            self._envs = {t: w for t, w in self._envs.items() if w.pending or w.in_flight or w.diverting}
            if len(self._envs) >= MAX_ENVS:
                # Every env has counts: drop them (fail-open), keeping the fleet's total true.
                self._fleet.pending -= sum(w.pending for w in self._envs.values())
                self._envs.clear()
        env = self._envs[tenant] = WindowView(self._threshold)
        return env

    def _speed_up(self) -> None:
        """An estimate reached half its threshold (under the lock): fold now, then every interval."""
        self._fast = True
        self._hurry.set()

    def _take(self, batch: list[tuple[Tenant, WindowView, int]]) -> None:
        """Move the batch's counts from pending to in flight (under the lock)."""
        total = 0
        for _, env, n in batch:
            env.pending -= n
            env.in_flight += n
            total += n
        self._fleet.pending -= total
        self._fleet.in_flight += total

    def _drop(self, batch: list[tuple[Tenant, WindowView, int]]) -> None:
        with self._lock:
            for _, env, n in batch:
                env.in_flight -= n
                env.others_per_s = 0.0  # no fold in each send while Redis fails: the pace is stale
            self._fleet.in_flight -= sum(n for _, _, n in batch)

    def _fold(
        self, batch: list[tuple[Tenant, WindowView, int]], *, every_env: bool = False
    ) -> list[TripWindow]:
        """Fold ``batch`` (under the fold lock), learn the replies and return them. ``every_env``:
        the batch holds every env with counts, so the replies decide alone whether the next
        folds come fast or slow."""
        counts = [(tenant.org_id, tenant.env_id, n) for tenant, _, n in batch]
        try:
            fleet, windows = self._backend.fold_trip_counts(
                counts, global_threshold=self._global_threshold, **self._trip
            )
        except BaseException as exc:
            self._drop(batch)
            if is_outage(exc):
                self._failed_folds += 1
            raise
        now = self._clock()
        with self._lock:
            total = 0
            fast = False
            for (_, env, n), window in zip(batch, windows, strict=True):
                env.in_flight -= n
                total += n
                env.learn(window, now, self._threshold, folded=n, **self._spans)
                fast = fast or env.estimate(now) >= self._half
            self._fleet.in_flight -= total
            if self._global_threshold:
                self._fleet.learn(fleet, now, self._global_threshold, folded=total, **self._spans)
                fast = fast or self._fleet.estimate(now) >= self._global_half
            if every_env or fast:
                self._fast = fast or any(
                    env.estimate(now) >= self._half for env in self._envs.values() if env.pending
                )
        return windows

    def _fold_or_report(self, batch: list[tuple[Tenant, WindowView, int]], *, every_env: bool) -> None:
        if not self._breaker.allow():
            self._drop(batch)  # fail open: these sends are not counted
            return
        try:
            self._fold(batch, every_env=every_env)
        except Exception as exc:
            self._breaker.record(exc)
            self._on_error(exc)
        else:
            self._breaker.record_success()

    def _start(self) -> None:
        self._running = True
        thread = threading.Thread(target=self._run, name="mollifier-trip-fold", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down: counts stay local
            self._running = False

    def _run(self) -> None:
        idle_since = self._clock()
        while True:
            # Every fold interval, or every slow interval while every estimate is below half its
            # threshold; at once when a send hurries it: its estimate reached half, or its env's
            # unfolded sends took a quarter of the headroom the last fold left (once per fold).
            self._hurry.wait(self.fold_interval_s)
            self._hurry.clear()
            if self.flush():
                idle_since = self._clock()
                continue
            with self._lock:
                if self._clock() - idle_since >= IDLE_EXIT_S and not any(
                    env.pending for env in self._envs.values()
                ):
                    self._running = False
                    return


_instances: weakref.WeakSet[LocalTrip] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for trip in list(_instances):
        trip._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
