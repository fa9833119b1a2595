"""OpenTelemetry instruments, created once per middleware; attributes from a bounded set.

Only the OpenTelemetry API is used: the application brings the SDK and an exporter. Tenant and
message ids are never metric attributes (they go to logs).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

from opentelemetry import metrics

from ._version import __version__

__all__ = [
    "METER_NAME",
    "DrainResultKind",
    "FailOpenStage",
    "Outcome",
    "Reason",
    "Telemetry",
    "ThrottledLog",
    "meter",
]

#: The meter every instrument of this package belongs to.
METER_NAME = "dramatiq_mollifier"

#: How often a recurring warning (a fail-open event) is logged at most, per kind. 10 seconds.
LOG_INTERVAL_MS = 10_000
#: How long a gauge's reading is exported after it was last set, in milliseconds: a process whose
#: drainer stopped stops exporting within this. 10 seconds.
READING_TTL_MS = 10_000


class Outcome(str, enum.Enum):
    """What the gate decided for one message."""

    PASS_THROUGH = "pass_through"
    SHADOW_LOG = "shadow_log"
    MOLLIFY = "mollify"
    #: The send raised ``BufferCapExceededError`` (cap overflow policy ``reject``).
    REJECTED = "rejected"


class Reason(str, enum.Enum):
    """Why the gate decided what it did: a small fixed set."""

    #: The env's enqueue rate tripped (diverts, shadow logs).
    PER_ENV_RATE = "per_env_rate"
    #: All envs together went over ``trip_global_threshold`` (diverts, shadow logs).
    GLOBAL_RATE = "global_rate"
    #: Evaluated and below the threshold.
    BELOW_THRESHOLD = "below_threshold"
    #: The org is not enrolled and shadow mode is off.
    NOT_ENROLLED = "not_enrolled"
    # Bypasses: decided without touching Redis.
    DRAINED = "bypass_drained"
    ADMITTED = "bypass_admitted"
    DELAYED = "bypass_delayed"
    ACTOR_OPT_OUT = "bypass_actor_opt_out"
    NO_TENANT = "bypass_no_tenant"
    #: Enqueued through a path that cannot skip the broker write (see ``interception``).
    UNINTERCEPTED = "bypass_unintercepted"
    # Fail-open: something broke, the message went to the broker as if we were not there.
    TRIP_ERROR = "fail_open_trip"
    BUFFER_ERROR = "fail_open_buffer"
    TENANT_ERROR = "fail_open_tenant"
    #: A re-send whose message id the buffer already holds: it went to the broker.
    DUPLICATE_ID = "duplicate_id"
    #: The circuit breaker was open: Redis was not called at all.
    BREAKER_OPEN = "fail_open_breaker"
    #: The tenant is paused: buffered whatever its rate.
    PAUSED = "paused"
    # A tenant at its cap (``cap_overflow``): to the broker, refused, or dead-lettered.
    CAP_PASS_THROUGH = "cap_pass_through"
    CAP_REJECTED = "cap_rejected"
    CAP_DEAD_LETTER = "cap_dead_letter"


class FailOpenStage(str, enum.Enum):
    """Where a fail-open event happened."""

    FLAGS = "flags"
    TENANT = "tenant"
    TRIP = "trip"
    BUFFER_WRITE = "buffer_write"
    #: Refused at once by the open circuit breaker (no Redis call).
    BREAKER = "breaker"
    #: Before this process knew its key layout to match the fleet's (Redis unreachable since
    #: startup): not gated, no decision recorded.
    LAYOUT = "layout"


class DrainResultKind(str, enum.Enum):
    """What became of one drained entry."""

    ACKED = "acked"
    REQUEUED = "requeued"
    FAILED = "failed"
    #: Handled, but its ack was refused: the lease had passed to another drainer.
    STALE = "stale"
    #: Cancelled by an operator (or a pending dramatiq-abort abort) after a drainer popped it.
    CANCELLED = "cancelled"


@cache
def _attributes(**values: str | bool) -> Mapping[str, str | bool]:
    # Cached per combination: the set is small and bounded, and the hot path allocates nothing.
    return dict(values)


def decision_attributes(outcome: Outcome, reason: Reason, *, enrolled: bool) -> Mapping[str, str | bool]:
    """The attributes ``mollifier.decisions`` counts one decision under."""
    return _attributes(outcome=outcome.value, reason=reason.value, enrolled=enrolled)


def meter(meter_provider: metrics.MeterProvider | None = None) -> metrics.Meter:
    """The package's meter (one instrumentation scope for every instrument), from ``meter_provider``
    or the global provider."""
    return metrics.get_meter(METER_NAME, __version__, meter_provider=meter_provider)


class Telemetry:
    """Every instrument of the package but the crash-retry ones (see ``CrashRetries``).

    Parameters:
      meter_provider: The provider to take the meter from. Defaults to the global one.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        instruments = meter(meter_provider)
        self.decisions = instruments.create_counter(
            "mollifier.decisions",
            unit="{decision}",
            description="Gate decisions, one per gated enqueue (a drained message's re-enqueue "
            "is one: bypass_drained).",
        )
        self.buffered = instruments.create_counter(
            "mollifier.buffered", unit="{message}", description="Messages written to the buffer."
        )
        self.drained = instruments.create_counter(
            "mollifier.drained", unit="{message}", description="Buffered messages handled by a drainer."
        )
        self.fail_open = instruments.create_counter(
            "mollifier.fail_open",
            unit="{event}",
            description="Errors that let a message pass as if the mollifier were not there.",
        )
        self.reclaimed = instruments.create_counter(
            "mollifier.leases_reclaimed",
            unit="{message}",
            description="DRAINING entries returned to their queue after their lease expired.",
        )
        self.time_in_buffer = instruments.create_histogram(
            "mollifier.time_in_buffer",
            unit="ms",
            description="Time from accept to successful drain.",
        )
        # Observable gauges over readings that expire (see _GaugeReadings), shared by every
        # Telemetry of this meter provider.
        self._gauges = _gauges_for(meter_provider, instruments)

    def record_decision(self, outcome: Outcome, reason: Reason, *, enrolled: bool, count: int = 1) -> None:
        """Count ``count`` gate decisions (more than one: messages moved past the gate in Redis)."""
        self.decisions.add(count, decision_attributes(outcome, reason, enrolled=enrolled))

    def record_decision_attributes(self, attributes: Mapping[str, str | bool]) -> None:
        """Count one gate decision by its :func:`decision_attributes`, computed ahead (hot path)."""
        self.decisions.add(1, attributes)

    def record_buffered(self, *, mode: str) -> None:
        """Count one message written to the buffer (``mode``: divert or dual_write)."""
        self.buffered.add(1, _attributes(mode=mode))

    def record_drained(self, result: DrainResultKind, count: int = 1) -> None:
        """Count drained entries by what became of them."""
        self.drained.add(count, _attributes(result=result.value))

    def record_fail_open(self, stage: FailOpenStage) -> None:
        """Count one fail-open event."""
        self.fail_open.add(1, _attributes(stage=stage.value))

    def record_reclaimed(self, count: int) -> None:
        """Count entries whose lease expired and that went back to their queue."""
        if count:
            self.reclaimed.add(count)

    def record_time_in_buffer(self, age_ms: float) -> None:
        """Record how long one drained entry waited in the buffer."""
        self.time_in_buffer.record(age_ms)

    def record_depth(self, depth: int) -> None:
        """Set the buffer depth gauge."""
        self._gauges.depth.replace({None: depth})

    def record_dwell(self, oldest_age_ms: int, env_ages_ms: list[int], dead_letters: int) -> None:
        """Set the dwell gauges: the oldest entry's age, the oldest envs' by rank (a rank no env
        holds any more is dropped), dead letters."""
        self._gauges.oldest_age.replace({None: oldest_age_ms})
        self._gauges.oldest_env_age.replace({str(rank): age for rank, age in enumerate(env_ages_ms, start=1)})
        self._gauges.dead_letters.replace({None: dead_letters})

    def forget_fleet_gauges(self) -> None:
        """Stop exporting the fleet gauges (depth, dwell, dead letters, the drain budget's):
        another process reports them."""
        gauges = self._gauges
        gauges.fleet_reporter = False
        for readings in (gauges.depth, gauges.oldest_age, gauges.oldest_env_age, gauges.dead_letters):
            readings.replace({})

    def record_fleet_in_use(self, in_use: int) -> None:
        """This process reports the fleet's gauges: set the drain budget in use (0 when idle)."""
        self._gauges.fleet_reporter = True
        self._gauges.outstanding.replace({None: in_use})

    def record_outstanding(self, in_use: int, *, budget: int) -> None:
        """Set the drain budget gauges: drained messages in the broker not yet started, and the
        budget they are held to.
        """
        self._gauges.outstanding.replace({None: in_use})
        self._gauges.budget.replace({None: budget})


class _GaugeReadings:
    """The fleet gauges' readings and their observable instruments, one set per meter provider:
    the SDK registers an instrument name once and keeps the first callbacks, so every Telemetry
    of a provider shares these (the last value set wins, as with one synchronous gauge)."""

    def __init__(self, instruments: metrics.Meter) -> None:
        # Observable gauges over readings that expire: a synchronous gauge of the OpenTelemetry
        # SDK exports its last value for good under cumulative temporality (the default), so a
        # process that lost the fleet gauges' lease, or whose buffer emptied while its drainer
        # was stopped, kept exporting an old depth beside the reporter's.
        self.depth = _Readings()
        self.oldest_age = _Readings()
        self.oldest_env_age = _Readings()
        self.dead_letters = _Readings()
        # The drain budget's two are the fleet's too: muted while another process holds the
        # fleet gauges' lease (None: no process here reports the fleet's gauges: not muted).
        self.fleet_reporter: bool | None = None
        self.outstanding = _Readings(muted=lambda: self.fleet_reporter is False)
        self.budget = _Readings(muted=lambda: self.fleet_reporter is False)
        gauges = (
            (
                "mollifier.buffer.depth",
                "{message}",
                self.depth,
                "QUEUED and DRAINING entries in the buffer; reported once for the fleet.",
            ),
            (
                "mollifier.buffer.oldest_age",
                "ms",
                self.oldest_age,
                "Age of the oldest QUEUED entry (0 if none), reported once for the fleet.",
            ),
            (
                "mollifier.buffer.oldest_env_age",
                "ms",
                self.oldest_env_age,
                "Age of the oldest QUEUED entry of the few envs that waited longest, by rank "
                "(1 = oldest); the envs are named in the mollifier.dwell log.",
            ),
            (
                "mollifier.buffer.dead_letters",
                "{message}",
                self.dead_letters,
                "FAILED entries kept in the buffer; reported once for the fleet.",
            ),
            (
                "mollifier.drain.outstanding",
                "{message}",
                self.outstanding,
                "Drained messages waiting in the broker, not yet started (the drain budget in use).",
            ),
            (
                "mollifier.drain.budget",
                "{message}",
                self.budget,
                "The drain budget: the fleet's consumption rate times the target wait, bounded.",
            ),
        )
        for name, unit, readings, description in gauges:
            instruments.create_observable_gauge(
                name, callbacks=[readings.observe], unit=unit, description=description
            )


_GAUGES: weakref.WeakKeyDictionary[Any, _GaugeReadings] = weakref.WeakKeyDictionary()
_GAUGES_LOCK = threading.Lock()


def _gauges_for(meter_provider: metrics.MeterProvider | None, instruments: metrics.Meter) -> _GaugeReadings:
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _GAUGES_LOCK:
        found = _GAUGES.get(provider)
        if found is None:
            found = _GAUGES[provider] = _GaugeReadings(instruments)
        return found


class _Readings:
    """One gauge's latest values by ``rank`` attribute (None: no attribute), exported while
    younger than :data:`READING_TTL_MS`."""

    def __init__(self, *, muted: Callable[[], bool] = lambda: False) -> None:
        self._lock = threading.Lock()
        self._values: dict[str | None, int] = {}
        self._set_at = float("-inf")
        self._muted = muted

    def replace(self, values: dict[str | None, int]) -> None:
        with self._lock:
            self._values, self._set_at = values, time.monotonic()

    def observe(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        with self._lock:
            if self._muted() or time.monotonic() - self._set_at > READING_TTL_MS / 1000:
                return []
            values = list(self._values.items())
        return [
            metrics.Observation(value, _attributes(rank=rank) if rank is not None else None)
            for rank, value in values
        ]


class ThrottledLog:
    """Logs a recurring warning at most once per ``interval_ms`` per key, counting the rest.

    A Redis outage makes every ``send()`` fail open; one line per send would flood the logs.

    Parameters:
      logger: Where the warnings go.
      interval_ms: The least time between two lines of the same key. Defaults to 10 seconds.
      clock: Seconds from an arbitrary origin. Defaults to ``time.monotonic``.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_ms: int = LOG_INTERVAL_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_ms / 1000
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (when the last line was written, events suppressed since)
        self._state: dict[str, tuple[float, int]] = {}

    def throttled_warning(
        self, key: str, msg: str, *args: Any, exc_info: BaseException | None = None
    ) -> None:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval_ms`` ago."""
        now = self._clock()
        with self._lock:
            last, suppressed = self._state.get(key, (float("-inf"), 0))
            if now - last < self._interval_s:
                self._state[key] = (last, suppressed + 1)
                return
            self._state[key] = (now, 0)
        if suppressed:
            msg += " (%d similar events not logged)"
            args = (*args, suppressed)
        self._logger.warning(msg, *args, exc_info=exc_info)
