"""The one immutable settings object, read from arguments or ``MOLLIFIER_*`` variables."""

from __future__ import annotations

import enum
import json
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .breaker import DEFAULT_BREAKER_COOLDOWN_MS, DEFAULT_BREAKER_FAILURES
from .errors import MollifierConfigurationError
from .models import CapOverflow
from .redis_urls import CLUSTER_SLOT_GROUPS, is_cluster_url, redis_url_problem
from .setting_reports import describe, warn_about_misspelled_variables

__all__ = [
    "ALL_ORGS",
    "DUAL_WRITE_ENTRY_TTL_S",
    "IDLE_WAIT_MARGIN_MS",
    "MAX_IN_FLIGHT",
    "MollifierMode",
    "MollifierSettings",
    "default_of",
    "TripEvaluator",
    "redis_url_problem",
]

#: The ``enabled_orgs`` element that enrols every org.
ALL_ORGS = "*"

#: How long buffered copies live in ``dual_write`` mode, where the broker holds the real copy.
DUAL_WRITE_ENTRY_TTL_S = 600

#: What the supervisor's grace period must hold beyond the drainer's stop: Dramatiq's own
#: shutdown (stopping consumers, requeueing unstarted messages) needs a moment too.
SHUTDOWN_MARGIN_MS = 1_000
#: How much shorter than the drainer's socket timeout its idle block must be, so the block's
#: empty reply is not taken for a timeout (drain/idle.py uses it too).
IDLE_WAIT_MARGIN_MS = 1_000

# Upper bounds. Past them a value is a mistake, and it would fail later and quietly: Redis
# refuses an expiry that overflows (every tripped send would then fail open), a thread cannot
# wait that long (OverflowError in the drainer's thread), a tick cannot read that many orgs.
#: The most entries a drainer may hold popped and not yet settled. A chunk's ids go to the drain
#: scripts as one command's arguments, which Lua's unpack() bounds at about 8,000 values (two
#: per slot in a claim): at 4,000 every claim failed and a paced drainer never drained.
MAX_IN_FLIGHT = 2_000
_DAY_MS = 86_400_000
_YEAR_S = 365 * 86_400


class MollifierMode(str, enum.Enum):
    """What a ``mollify`` decision does with the message."""

    #: The message goes to the buffer instead of the broker (the point of the package).
    DIVERT = "divert"
    #: The message goes to the broker and a copy to the buffer, which the drainer only audits.
    DUAL_WRITE = "dual_write"


class TripEvaluator(str, enum.Enum):
    """How the gate counts an env's enqueues against its threshold."""

    #: Each process counts locally and folds its counts into the fleet's windows every
    #: ``trip_fold_interval_ms``: no Redis round trip for a send that is not diverted.
    LOCAL = "local"
    #: One Redis round trip per gated send, counted in the fleet's window at once.
    EXACT = "exact"


#: Left in an org id by a list in another form (quotes an env file kept, ``acme globex``...).
_NOT_IN_AN_ORG_ID = re.compile(r"[\s\"'\[\];]")


def _parse_orgs(value: Any) -> Any:
    """Accept a comma-separated string or a JSON list (from the environment), or any iterable of
    strings. An id holding a quote, bracket, ';' or whitespace is refused: it would enrol nobody."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.split(",")
        except ValueError as exc:
            raise MollifierConfigurationError(f"not a JSON list of org ids: {exc}") from exc
    if isinstance(value, (list, tuple, set, frozenset)):
        orgs = []
        for raw in value:
            if not isinstance(raw, str):
                raise MollifierConfigurationError(f"expected strings, got {raw!r}")
            if _NOT_IN_AN_ORG_ID.search(org := raw.strip()):
                what = "holds a quote, bracket, ';' or whitespace: list ids as acme,globex or in JSON"
                raise MollifierConfigurationError(f"org id {org!r} {what}")
            if org:
                orgs.append(org)
        return frozenset(orgs)
    return value


class MollifierSettings(BaseSettings):
    """Every knob of the mollifier. Immutable; validated once when built.

    Any field may come from the environment as ``MOLLIFIER_<FIELD>``; arguments win.
    """

    model_config = SettingsConfigDict(env_prefix="MOLLIFIER_", frozen=True, extra="forbid")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise MollifierConfigurationError(describe(exc)) from exc
        warn_about_misspelled_variables(f"MOLLIFIER_{name.upper()}" for name in type(self).model_fields)

    #: Kill switch. Off, the middleware does no work at all. Defaults to False.
    enabled: bool = False
    #: Evaluate orgs that are not enrolled and log ``mollifier.would_mollify``. Defaults to False.
    shadow_mode: bool = False
    #: ``divert`` (default) or ``dual_write``.
    mode: MollifierMode = MollifierMode.DIVERT
    #: Orgs enrolled statically; ``"*"`` enrols every org. Defaults to none.
    enabled_orgs: Annotated[frozenset[str], NoDecode, BeforeValidator(_parse_orgs)] = frozenset()
    #: The Redis that holds the buffer, the trip counters and the runtime flags.
    redis_url: str = "redis://localhost:6379/0"
    #: The prefix of every Redis key this package writes. Defaults to ``mollifier``.
    key_prefix: str = "mollifier"
    #: Slot groups of the buffer's keys (README: "Redis Cluster"). 0: one group under today's key
    #: names. Defaults to None: 0 on one server, 16 with a cluster URL.
    slot_groups: int | None = Field(default=None, ge=0, le=1_024)
    #: Replicas that must acknowledge each buffer write (``WAIT``) before it counts; fewer within
    #: ``buffer_wait_timeout_ms``: the send fails open. Defaults to 0: no wait (asynchronous).
    buffer_wait_replicas: int = Field(default=0, ge=0, le=16)
    #: How long a buffer write waits for ``buffer_wait_replicas``. Defaults to 100 ms.
    buffer_wait_timeout_ms: int = Field(default=100, ge=1, le=10_000)
    #: The fixed window of the trip counter, in milliseconds. Defaults to 200.
    trip_window_ms: int = Field(default=200, gt=0, le=_DAY_MS)
    #: An env trips when its window count is strictly greater than this. Defaults to 100.
    trip_threshold: int = Field(default=100, ge=0, le=1_000_000_000)
    #: How long a tripped env stays tripped after its last over-threshold enqueue. Defaults to 500.
    trip_hold_ms: int = Field(default=500, ge=0, le=_DAY_MS)
    #: ``local`` (default): each process counts sends locally and folds its counts into the
    #: fleet-wide windows in the background; a send that is not diverted costs no Redis round
    #: trip. ``exact``: one round trip per gated send (see the README for the bounds of each).
    trip_evaluator: TripEvaluator = TripEvaluator.LOCAL
    #: ``local`` evaluator: how often a process folds its counts into the fleet's windows and
    #: learns which envs are tripped, in milliseconds. At most ``trip_window_ms``. Each fold costs
    #: about one Redis round trip, shared by the sends of the interval. Defaults to 20.
    trip_fold_interval_ms: int = Field(default=20, gt=0, le=1_000)
    #: A fleet-wide ceiling: when all envs together send more than this in ``trip_window_ms``,
    #: every enrolled env is diverted (``reason=global_rate``) for ``trip_hold_ms``. Needs the
    #: ``local`` evaluator. Defaults to 0: no ceiling.
    trip_global_threshold: int = Field(default=0, ge=0, le=1_000_000_000)
    #: Expiry of buffered entries in seconds. Unset: none in ``divert`` mode, 600 in ``dual_write``.
    entry_ttl_s: int | None = Field(default=None, gt=0, le=_YEAR_S)
    #: Run a drainer in worker processes. Unset: same as ``enabled``.
    drainer_enabled: bool | None = None
    #: Drained messages waiting in the broker (not yet started by a worker), fleet-wide, at most:
    #: the ceiling of the drain budget that keeps a burst in the buffer instead of the broker
    #: queue. 0 turns pacing off (the drainer then pushes as fast as its handlers can). Defaults
    #: to 1000.
    drain_max_outstanding: int = Field(default=1_000, ge=0, le=100_000)
    #: How long a quiet message should wait behind drained ones, in milliseconds: the drain budget
    #: is 20 plus the fleet's consumption rate times this (at most drain_max_outstanding).
    #: 0 makes the budget drain_max_outstanding. Defaults to 50.
    drain_target_wait_ms: int = Field(default=50, ge=0, le=60_000)
    #: Drained messages per second, fleet-wide, at most. Defaults to 0: no rate cap.
    drain_rate_limit_per_s: int = Field(default=0, ge=0, le=1_000_000)
    #: How long a drained message may wait in the broker unstarted before its budget slot is freed
    #: anyway (a message lost from the broker, a purged queue, prefetched by a worker that was
    #: killed). 100 times the target wait: a budget sized in time never holds a message that long
    #: while workers run. Defaults to 10 s.
    drain_outstanding_ttl_ms: int = Field(default=10_000, gt=0, le=86_400_000)
    #: Handler threads per drainer: broker writes in flight at once. Defaults to 16.
    drain_concurrency: int = Field(default=16, gt=0, le=1_000)
    #: Entries a drainer has popped and not yet settled, at most (refused below drain_concurrency):
    #: a refill waits for half of them, so this sizes the drainer's round trips. Defaults to 64,
    #: or drain_concurrency if larger; at most 2,000.
    drain_max_in_flight: int = Field(default=64, gt=0, le=MAX_IN_FLIGHT)
    #: Entries popped from one env per tick. Defaults to 100.
    drain_batch_size: int = Field(default=100, gt=0, le=10_000)
    #: Handler attempts before an entry is dead-lettered. Defaults to 3.
    drain_max_attempts: int = Field(default=3, gt=0, le=1_000)
    #: The wait before a failed entry's second attempt, doubling per attempt (at most half the
    #: lease), in milliseconds. Broker unavailability consumes no attempt. Defaults to 1 second.
    drain_retry_delay_ms: int = Field(default=1_000, ge=0, le=3_600_000)
    #: How long entries for an actor or queue this worker does not declare (a deploy rolling out)
    #: are retried before they are dead-lettered, in milliseconds; 0 dead-letters them at once.
    #: Defaults to 5 minutes.
    drain_unknown_actor_grace_ms: int = Field(default=300_000, ge=0, le=86_400_000)
    #: Orgs visited per drain tick. Defaults to 500.
    drain_max_orgs_per_tick: int = Field(default=500, gt=0, le=10_000)
    #: Sleep after an idle tick, in milliseconds. Defaults to 100.
    drain_poll_interval_ms: int = Field(default=100, gt=0, le=60_000)
    #: How long a popped entry may stay DRAINING before any drainer reclaims it; the drainer
    #: renews the leases of handlers still running. Defaults to 60 s.
    drain_lease_ms: int = Field(default=60_000, gt=0, le=_DAY_MS)
    #: Payload bytes one pop may return at most (the first entry whatever its size), so a batch
    #: of large messages is read in replies that fit the socket timeout. Defaults to 4 MiB.
    drain_batch_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1_024, le=512 * 1024 * 1024)
    #: How long one Redis command of the drainer may wait for its reply, in milliseconds: the
    #: drainer has its own connections, without the send path's 0.5 s timeout and without
    #: retries (a pop must never run twice). Defaults to 10 s.
    drain_socket_timeout_ms: int = Field(default=10_000, ge=1_000, le=600_000)
    #: The longest an idle drainer (nothing queued) waits between looks at the buffer, in
    #: milliseconds. It blocks on a wake-up list that the first message buffered signals, so a
    #: burst still starts draining at once; 0 turns this off (polling every
    #: ``drain_poll_interval_ms``). Defaults to 5 s.
    drain_idle_wait_ms: int = Field(default=5_000, ge=0, le=60_000)
    #: Broker connections the drainer's handlers share on brokers that open one per thread that
    #: enqueues (RabbitMQ), kept across drainer restarts. Defaults to 2.
    drain_broker_connections: int = Field(default=2, gt=0, le=64)
    #: How long worker shutdown waits for the drainer, in milliseconds. It runs first, in
    #: ``before_worker_shutdown``: Dramatiq's own shutdown timeout starts after it, so the two add
    #: up. Must end ``SHUTDOWN_MARGIN_MS`` (1 s) within ``supervisor_grace_period_ms``.
    #: Defaults to 10 s.
    drain_shutdown_timeout_ms: int = Field(default=10_000, gt=0, le=_DAY_MS)
    #: Dramatiq's worker shutdown timeout (``dramatiq --worker-shutdown-timeout``, in ms). When
    #: set, the drainer's stop plus this must fit in ``supervisor_grace_period_ms``. Defaults to
    #: None: not checked (Dramatiq's own default, 600 s, outlasts most supervisors).
    graceful_shutdown_timeout_ms: int | None = Field(default=None, gt=0, le=_DAY_MS)
    #: How long the process supervisor waits between SIGTERM and SIGKILL, in ms: Kubernetes'
    #: ``terminationGracePeriodSeconds`` (30 s by default), systemd's ``TimeoutStopSec`` (90 s),
    #: Docker's ``stop --time`` (10 s), supervisord's ``stopwaitsecs`` (10 s). Defaults to 30 s.
    supervisor_grace_period_ms: int = Field(default=30_000, gt=0, le=_DAY_MS)
    #: Consecutive Redis outages (connection errors, timeouts) after which the gate and the flags
    #: refresh stop calling Redis for ``breaker_cooldown_ms``, failing open. At most 1,000: past
    #: that the breaker would never open. Defaults to 3.
    breaker_failure_threshold: int = Field(default=DEFAULT_BREAKER_FAILURES, gt=0, le=1_000)
    #: How long the open circuit breaker fails open without calling Redis before one probe call.
    #: At most 1 hour: while it is open the mollifier is off. Defaults to 5 s.
    breaker_cooldown_ms: int = Field(default=DEFAULT_BREAKER_COOLDOWN_MS, gt=0, le=3_600_000)
    #: Send-side scripts written straight to a pooled connection where that is safe (a plain
    #: ``redis.Redis``, no client-side caching, no instrumentation). False keeps every call on
    #: redis-py's command path, for tracing. Defaults to True.
    redis_direct_hot_path: bool = True
    #: Most buffered (QUEUED + DRAINING) messages of one env; runtime overrides per env
    #: (``dramatiq-mollifier caps set``) win. Defaults to None: no cap.
    cap_per_env: int | None = Field(default=None, ge=0, le=1_000_000_000)
    #: Most buffered messages of one org, all its envs together; runtime overrides win.
    #: Defaults to None: no cap.
    cap_per_org: int | None = Field(default=None, ge=0, le=1_000_000_000)
    #: What a send over a cap does: ``pass_through`` (to the broker, counted), ``reject`` (the
    #: send raises ``BufferCapExceededError``) or ``dead_letter``. Defaults to ``pass_through``.
    cap_overflow: CapOverflow = CapOverflow.PASS_THROUGH

    @field_validator("key_prefix")
    @classmethod
    def _check_key_prefix(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise MollifierConfigurationError("must be a non-empty string without whitespace")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        problem = redis_url_problem(value)
        if problem is not None:
            raise MollifierConfigurationError(problem)
        return value

    @model_validator(mode="after")
    def _check_entry_ttl(self) -> MollifierSettings:
        if self.entry_ttl_s is not None and self.mode is MollifierMode.DIVERT:
            raise MollifierConfigurationError(
                "entry_ttl_s (MOLLIFIER_ENTRY_TTL_S) cannot be set in divert mode: the buffer holds "
                "the only copy of a diverted message, and an expired entry would be lost without a "
                "trace. Unset it, or use mode=dual_write"
            )
        return self

    @model_validator(mode="after")
    def _check_slot_groups(self) -> MollifierSettings:
        if self.slot_groups == 0 and is_cluster_url(self.redis_url):
            raise MollifierConfigurationError(
                "slot_groups (MOLLIFIER_SLOT_GROUPS) must be at least 1 with a cluster URL: without "
                "groups a script's keys fall in many slots (CROSSSLOT)"
            )
        if self.effective_slot_groups and ("{" in self.key_prefix or "}" in self.key_prefix):
            raise MollifierConfigurationError(
                f"key_prefix (MOLLIFIER_KEY_PREFIX) must not contain braces with slot groups, got "
                f"{self.key_prefix!r}: each group's hash tag follows the prefix, and a brace in it "
                "would become the keys' hash tag instead (every group on one slot, or CROSSSLOT)"
            )
        if self.effective_slot_groups and self.trip_global_threshold:
            raise MollifierConfigurationError(
                "trip_global_threshold (MOLLIFIER_TRIP_GLOBAL_THRESHOLD) needs slot_groups=0: the "
                "fleet-wide ceiling is folded with every env's counts in one script"
            )
        return self

    @model_validator(mode="after")
    def _check_drain(self) -> MollifierSettings:
        idle_ms, timeout_ms = self.drain_idle_wait_ms, self.drain_socket_timeout_ms
        if idle_ms and idle_ms + IDLE_WAIT_MARGIN_MS > timeout_ms:
            raise MollifierConfigurationError(
                f"drain_idle_wait_ms ({idle_ms}) must be at least {IDLE_WAIT_MARGIN_MS} ms shorter than "
                f"drain_socket_timeout_ms ({timeout_ms}): an idle drainer blocks on Redis that long, "
                "and a reply that late would be taken for an outage"
            )
        if self.drain_rate_limit_per_s and not self.drain_max_outstanding:
            raise MollifierConfigurationError(
                f"drain_rate_limit_per_s ({self.drain_rate_limit_per_s}) needs drain_max_outstanding "
                "above 0 (MOLLIFIER_DRAIN_MAX_OUTSTANDING): with no pace, nothing enforces the rate"
            )
        in_flight, handlers = self.drain_max_in_flight, self.drain_concurrency
        if "drain_max_in_flight" in self.model_fields_set and in_flight < handlers:
            raise MollifierConfigurationError(
                f"drain_max_in_flight (MOLLIFIER_DRAIN_MAX_IN_FLIGHT) must be at least "
                f"drain_concurrency ({handlers}), got {in_flight}: each handler holds one entry"
            )
        return self

    @model_validator(mode="after")
    def _check_trip_evaluator(self) -> MollifierSettings:
        if self.trip_fold_interval_ms > self.trip_window_ms:
            raise MollifierConfigurationError(
                f"trip_fold_interval_ms (MOLLIFIER_TRIP_FOLD_INTERVAL_MS) must be at most "
                f"trip_window_ms ({self.trip_window_ms}), got {self.trip_fold_interval_ms}: counts "
                "folded later than a window would land in the next one"
            )
        if self.trip_global_threshold and self.trip_evaluator is not TripEvaluator.LOCAL:
            raise MollifierConfigurationError(
                "trip_global_threshold (MOLLIFIER_TRIP_GLOBAL_THRESHOLD) needs "
                "trip_evaluator=local (MOLLIFIER_TRIP_EVALUATOR): the fleet-wide ceiling is "
                "counted by the local evaluator's folds"
            )
        return self

    @model_validator(mode="after")
    def _check_shutdown_timeouts(self) -> MollifierSettings:
        # Dramatiq runs before_worker_shutdown (the drainer's stop) and only then starts its own
        # shutdown timeout: the two add up, and the supervisor kills the process at its grace
        # period whatever either says.
        grace_ms = self.supervisor_grace_period_ms
        shutdown_ms = self.drain_shutdown_timeout_ms + (self.graceful_shutdown_timeout_ms or 0)
        if shutdown_ms + SHUTDOWN_MARGIN_MS > grace_ms:
            graceful = self.graceful_shutdown_timeout_ms
            parts = f"drain_shutdown_timeout_ms ({self.drain_shutdown_timeout_ms})"
            if graceful is not None:
                parts += f" + graceful_shutdown_timeout_ms ({graceful})"
            raise MollifierConfigurationError(
                f"{parts} must end at least {SHUTDOWN_MARGIN_MS} ms before "
                f"supervisor_grace_period_ms ({grace_ms}): the drainer stops before Dramatiq's "
                "own shutdown timeout starts, and the supervisor kills the process at its grace "
                "period"
            )
        return self

    @property
    def run_drainer(self) -> bool:
        """Whether worker processes start a drainer (``drainer_enabled``, else ``enabled``)."""
        return self.enabled if self.drainer_enabled is None else self.drainer_enabled

    @property
    def effective_entry_ttl_s(self) -> int | None:
        """The entry expiry in force: ``entry_ttl_s``, else 600 s in ``dual_write``, else none."""
        if self.entry_ttl_s is not None:
            return self.entry_ttl_s
        return DUAL_WRITE_ENTRY_TTL_S if self.mode is MollifierMode.DUAL_WRITE else None

    @property
    def effective_slot_groups(self) -> int:
        """``slot_groups``, else 16 with a cluster URL, else 0 (today's key names)."""
        if self.slot_groups is not None:
            return self.slot_groups
        return CLUSTER_SLOT_GROUPS if is_cluster_url(self.redis_url) else 0

    @property
    def buffer_options(self) -> dict[str, Any]:
        """The ``MollifierBuffer`` keywords these settings imply: key prefix, entry TTL, lease,
        and the mode every accepted entry records.
        """
        return {
            "key_prefix": self.key_prefix,
            "entry_ttl_s": self.effective_entry_ttl_s,
            "lease_ms": self.drain_lease_ms,
            "mode": self.mode.value,
            "direct_hot_path": self.redis_direct_hot_path,
            "wait_replicas": self.buffer_wait_replicas,
            "wait_timeout_ms": self.buffer_wait_timeout_ms,
            # Unset with a one-server URL: the client decides (16 for a RedisCluster client).
            "slot_groups": self.slot_groups
            if self.slot_groups is not None
            else self.effective_slot_groups or None,
        }

    def org_enrolled_statically(self, org_id: str) -> bool:
        """Whether ``enabled_orgs`` enrols ``org_id``."""
        return ALL_ORGS in self.enabled_orgs or org_id in self.enabled_orgs


def default_of(name: str) -> Any:
    """The default of setting ``name``: the one place each default is written.

    Components that also take the setting as a keyword argument (``MollifierDrainer``,
    ``MollifierBuffer``) default to this, so using them directly behaves as the settings do.
    """
    return MollifierSettings.model_fields[name].default
