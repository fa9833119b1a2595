"""A circuit breaker for calls to a Redis the package can live without.

The mollifier's Redis is not critical: when it is down or stalled, messages go to the broker as
if the package were not there (fail-open). Failing open after each call's own timeout still makes
every ``send()`` wait that timeout. :class:`CircuitBreaker` stops the calls instead: after
``failure_threshold`` consecutive outages (a connection error, a timeout, a cluster client with
no node answering), every caller is refused at once for ``cooldown_ms``; then exactly one call
goes through as a probe, and its outcome closes the breaker or opens it for another cool-down.

An error *reply* (a script error, a wrong type) is not an outage: Redis answered. An error
raised apart from Redis (a message that does not encode) is neither an outage nor an answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.exceptions import RedisClusterException

__all__ = [
    "DEFAULT_BREAKER_COOLDOWN_MS",
    "DEFAULT_BREAKER_FAILURES",
    "CircuitBreaker",
    "CircuitOpenError",
    "is_outage",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Consecutive outages that open a breaker: 3.
DEFAULT_BREAKER_FAILURES = 3
#: How long an open breaker refuses calls before one probe: 5 seconds.
DEFAULT_BREAKER_COOLDOWN_MS = 5_000

# (A cluster client raises RedisClusterException, no RedisError, when no node answers.)
_OUTAGES = (redis.ConnectionError, redis.TimeoutError, OSError, RedisClusterException)


class CircuitOpenError(redis.RedisError):
    """Raised instead of calling Redis while the breaker is open (not an outage itself)."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says Redis could not be reached in time."""
    return _in_chain(exc, _OUTAGES)


def _in_chain(exc: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` or one of the (up to four) exceptions it was raised from is of ``types``."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, types):
            return True
        seen = seen.__cause__
    return False


class CircuitBreaker:
    """Closed (calls go through), open (refused at once), or probing (one call goes through).

    Parameters:
      name: Named in the log lines when the breaker opens and closes.
      failure_threshold: Consecutive outages that open it. Defaults to 3.
      cooldown_ms: How long it stays open before letting one probe through. Defaults to 5 s.
      clock: Seconds from an arbitrary origin. Defaults to ``time.monotonic``.

    Every call :meth:`allow` lets through must be followed by :meth:`record_success` or
    :meth:`record_failure` (see :meth:`record`). Thread-safe; the closed path takes no lock.
    A forked child starts closed, with a fresh lock.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = DEFAULT_BREAKER_FAILURES,
        cooldown_ms: int = DEFAULT_BREAKER_COOLDOWN_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if cooldown_ms < 0:
            raise ValueError(f"cooldown_ms must be >= 0, got {cooldown_ms}")
        self.name = name
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_ms / 1000
        self._clock = clock
        self._reset()
        _breakers.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        # None while closed; else when the next probe may go (clock).
        self._open_until: float | None = None
        # When the probe in flight, if any, is given up on (a probe that never reports).
        self._probe_deadline: float | None = None

    @property
    def is_open(self) -> bool:
        """Whether calls are being refused (or one probe is out)."""
        return self._open_until is not None

    def allow(self) -> bool:
        """Whether a call may go to Redis now. False: fail open without calling."""
        if self._open_until is None:
            return True
        now = self._clock()
        with self._lock:
            if self._open_until is None:
                return True
            if now < self._open_until:
                return False
            if self._probe_deadline is not None and now < self._probe_deadline:
                return False
            self._probe_deadline = now + max(self._cooldown_s, 1.0)
            return True

    def record_success(self) -> None:
        """A call reached Redis and got an answer (an error reply counts)."""
        if self._failures == 0 and self._open_until is None:
            return
        with self._lock:
            was_open = self._open_until is not None
            self._failures = 0
            self._open_until = self._probe_deadline = None
        if was_open:
            logger.warning("mollifier circuit breaker %r closed: Redis answers again.", self.name)

    def record_failure(self) -> None:
        """A call met an outage (connection error or timeout)."""
        with self._lock:
            self._failures += 1
            probing = self._probe_deadline is not None
            if not probing and (self._open_until is not None or self._failures < self._threshold):
                return
            opening = self._open_until is None
            self._open_until = self._clock() + self._cooldown_s
            self._probe_deadline = None
            failures = self._failures
        if opening:
            logger.warning(
                "mollifier circuit breaker %r open after %d consecutive Redis failures: calls fail "
                "open at once for %d ms, then one probe.",
                self.name,
                failures,
                int(self._cooldown_s * 1000),
            )

    def call(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``function(*args, **kwargs)`` if :meth:`allow`, recording its outcome; else raise
        :class:`CircuitOpenError` (a ``redis.RedisError``) without calling it."""
        if not self.allow():
            raise CircuitOpenError(f"circuit breaker {self.name!r} is open")
        try:
            result = function(*args, **kwargs)
        except Exception as exc:
            self.record(exc)
            raise
        self.record_success()
        return result

    def record(self, exc: BaseException | None) -> None:
        """:meth:`record_success` when Redis answered (``exc`` None, or an error reply),
        :meth:`record_failure` for an outage (see :func:`is_outage`), and neither for an error
        that did not come from Redis (a message that does not encode, a bad tenant): counted as
        a success, such errors closed the breaker during a stall, and every other send then
        waited its timeout. A probe that ends so lets the next call probe."""
        if exc is None:
            self.record_success()
        elif is_outage(exc):
            self.record_failure()
        elif _in_chain(exc, (redis.RedisError,)) and not isinstance(exc, CircuitOpenError):  # an error reply
            self.record_success()
        elif self._probe_deadline is not None:
            with self._lock:
                self._probe_deadline = None


_breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a thread of the parent would stay held forever in the child.
    for breaker in list(_breakers):
        breaker._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
