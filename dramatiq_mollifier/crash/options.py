"""``CrashRetries``'s timing defaults, and the checks its constructor runs on its options.

A wrong type fails at construction, naming the option: ``heartbeat_interval_ms="2000"`` would
otherwise raise a bare ``TypeError`` from a comparison, and ``retry_oom_kills="false"`` would be
true.
"""

from __future__ import annotations

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware, Retries

from ..errors import MiddlewareConfigurationError, MollifierConfigurationError

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "DEFAULT_LIVENESS_TIMEOUT_MS",
    "DEFAULT_RECORD_TTL_MS",
    "DEFAULT_REPEAT_WINDOW_MS",
    "check_options",
    "check_placement",
]

#: How long an in-flight record is kept for a redelivery to find: 7 days.
DEFAULT_RECORD_TTL_MS = 7 * 86_400_000
#: How often a worker process refreshes its heartbeat key: 2 seconds.
DEFAULT_HEARTBEAT_INTERVAL_MS = 2_000
#: How long a heartbeat key lives unrefreshed: 10 seconds.
DEFAULT_LIVENESS_TIMEOUT_MS = 10_000
#: How long after an attempt failed any new delivery of it is taken as a repeat: 1 minute.
DEFAULT_REPEAT_WINDOW_MS = 60_000


def check_options(
    *,
    key_prefix: object,
    record_ttl_ms: object,
    heartbeat_interval_ms: object,
    liveness_timeout_ms: object,
    repeat_window_ms: object,
    flags: dict[str, object],
) -> None:
    """Raise :class:`MollifierConfigurationError` naming the first option that is not usable."""
    if not isinstance(key_prefix, str) or not key_prefix:
        raise MollifierConfigurationError(f"key_prefix must be a non-empty string, not {key_prefix!r}")
    timings = {
        "record_ttl_ms": record_ttl_ms,
        "heartbeat_interval_ms": heartbeat_interval_ms,
        "liveness_timeout_ms": liveness_timeout_ms,
        "repeat_window_ms": repeat_window_ms,
    }
    for name, value in timings.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise MollifierConfigurationError(f"{name} must be an int of milliseconds, not {value!r}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise MollifierConfigurationError(f"{name} must be True or False, not {value!r}")
    assert isinstance(record_ttl_ms, int) and isinstance(heartbeat_interval_ms, int)
    assert isinstance(liveness_timeout_ms, int) and isinstance(repeat_window_ms, int)
    if heartbeat_interval_ms <= 0:
        raise MollifierConfigurationError("heartbeat_interval_ms must be positive")
    if liveness_timeout_ms < 2 * heartbeat_interval_ms:
        raise MollifierConfigurationError("liveness_timeout_ms must be at least twice heartbeat_interval_ms")
    if record_ttl_ms <= liveness_timeout_ms:
        raise MollifierConfigurationError("record_ttl_ms must exceed liveness_timeout_ms")
    if not 0 <= repeat_window_ms <= record_ttl_ms:
        raise MollifierConfigurationError("repeat_window_ms must be between 0 and record_ttl_ms")


def check_placement(broker: Broker, crash_retries: Middleware) -> None:
    """Refuse ``CrashRetries`` placed before Retries, raising a ``MiddlewareError``.

    Dramatiq runs after-hooks in reverse order, so Retries would retry or dead-letter a crashed
    message before ``CrashRetries`` has kept that delivery's record: the record would then stay
    in the process's memory for good, and a sibling thread's crash in between would let the
    next delivery run the actor again, past ``max_retries``.
    """
    order = broker.middleware
    retries = [index for index, middleware in enumerate(order) if isinstance(middleware, Retries)]
    if retries and crash_retries in order and order.index(crash_retries) < retries[0]:
        raise MiddlewareConfigurationError(
            "CrashRetries is placed before Retries on the broker: add it after (broker."
            "add_middleware(CrashRetries()) appends it) so a crash verdict reaches Retries first"
        )
