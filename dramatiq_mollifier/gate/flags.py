"""Runtime per-org enrolment flags: one Redis hash an operator flips without a restart.

The hash ``<key_prefix>:org-flags`` maps an org id to ``"true"`` or ``"false"``. Parsing is
strict: any other value (``"False"``, ``"yes"``, ``""``) is logged and means "not enrolled".
The gate never reads the hash per enqueue: :class:`OrgFlagsView` keeps a copy of the whole hash
and refreshes it at most every ``refresh_ms``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

import redis

from ..breaker import CircuitBreaker
from ..errors import BufferUnavailableError
from ..settings import default_of

__all__ = ["FLAG_REFRESH_MS", "OrgFlags", "OrgFlagsView", "flags_key", "parse_flag"]

logger = logging.getLogger(__name__)

#: How often a process re-reads the runtime flags, in milliseconds: a flip takes effect within this.
FLAG_REFRESH_MS = 1_000

_TRUE = "true"
_FALSE = "false"


def flags_key(key_prefix: str) -> str:
    """The name of the flags hash under ``key_prefix``."""
    return f"{key_prefix}:org-flags"


def parse_flag(raw: bytes | str) -> bool | None:
    """``"true"`` is True, ``"false"`` is False, anything else None (invalid). Case-sensitive."""
    value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if value == _TRUE:
        return True
    if value == _FALSE:
        return False
    return None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class OrgFlags:
    """Reads and writes the runtime flags (what the ``orgs`` CLI commands call).

    Parameters:
      client: A ``redis.Redis`` client.
      key_prefix: The prefix of the flags key. Defaults to ``mollifier``.

    Redis errors are raised as :class:`BufferUnavailableError`.
    """

    def __init__(self, client: redis.Redis, *, key_prefix: str = default_of("key_prefix")) -> None:
        self._client = client
        self.key = flags_key(key_prefix)

    def enable(self, org_id: str) -> None:
        """Enrol ``org_id``."""
        self._set(org_id, _TRUE)

    def disable(self, org_id: str) -> None:
        """Record ``org_id`` as not enrolled (a static ``enabled_orgs`` still enrols it)."""
        self._set(org_id, _FALSE)

    def remove(self, org_id: str) -> bool:
        """Forget the flag of ``org_id``; False if it had none."""
        try:
            return bool(self._client.hdel(self.key, org_id))
        except redis.RedisError as exc:
            raise BufferUnavailableError(f"could not remove the flag of org {org_id!r}: {exc}") from exc

    def all(self) -> dict[str, bool]:
        """Every flag, org id to enrolled. Invalid values are logged and read as False."""
        try:
            raw: dict[bytes | str, bytes | str] = self._client.hgetall(self.key)
        except redis.RedisError as exc:
            raise BufferUnavailableError(f"could not read the org flags: {exc}") from exc
        flags: dict[str, bool] = {}
        for field, value in raw.items():
            org_id = _text(field)
            parsed = parse_flag(value)
            if parsed is None:
                logger.warning(
                    "Invalid mollifier flag %r for org %r in %r: only 'true' and 'false' are "
                    "accepted; the org is treated as not enrolled.",
                    _text(value),
                    org_id,
                    self.key,
                )
                parsed = False
            flags[org_id] = parsed
        return flags

    def enrolled(self) -> frozenset[str]:
        """The orgs whose flag is ``"true"``."""
        return frozenset(org_id for org_id, on in self.all().items() if on)

    def _set(self, org_id: str, value: str) -> None:
        if not isinstance(org_id, str) or not org_id:
            raise ValueError(f"expected a non-empty org id, got {org_id!r}")
        try:
            self._client.hset(self.key, org_id, value)
        except redis.RedisError as exc:
            raise BufferUnavailableError(f"could not set the flag of org {org_id!r}: {exc}") from exc


class OrgFlagsView:
    """A process-local copy of the runtime flags, refreshed at most every ``refresh_ms``.

    Reading never waits on Redis: the first :meth:`enrolled` call after the interval serves the
    copy it has and starts a refresh in the background (one at a time), so a slow or stalled
    Redis never holds up a ``send()``. Until the first refresh has finished, no org is enrolled by
    its runtime flag. A failed refresh empties the view (every org reads as not enrolled by its
    runtime flag: fail-open) and calls ``on_error``; the next attempt waits a full interval.
    While ``breaker`` is open, no refresh is attempted.

    Parameters:
      flags: Where the flags live.
      refresh_ms: The least time between two reads of the hash. Defaults to ``FLAG_REFRESH_MS``.
      on_error: Called with the exception of a failed refresh. Defaults to doing nothing.
      clock: Seconds from an arbitrary origin. Defaults to ``time.monotonic``.
      breaker: Shared with the other callers of the same Redis. Defaults to none.
      spawn: Runs a refresh off the caller's thread. Defaults to a new daemon thread per refresh.
    """

    def __init__(
        self,
        flags: OrgFlags,
        *,
        refresh_ms: int = FLAG_REFRESH_MS,
        on_error: Callable[[Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        breaker: CircuitBreaker | None = None,
        spawn: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        if refresh_ms < 0:
            raise ValueError(f"refresh_ms must be >= 0, got {refresh_ms}")
        self._flags = flags
        self._refresh_s = refresh_ms / 1000
        self._on_error = on_error
        self._clock = clock
        self._breaker = breaker
        self._spawn = spawn if spawn is not None else _in_thread
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._enrolled: frozenset[str] = frozenset()
        self._next_refresh_at = float("-inf")
        _views.add(self)

    def _after_fork(self) -> None:
        # A child forked while a refresh was under way would otherwise wait forever for the
        # parent's thread (which did not come along) to finish it.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._next_refresh_at = float("-inf")

    def enrolled(self, org_id: str) -> bool:
        """Whether the runtime flag of ``org_id`` is ``"true"``, as of the last refresh."""
        if self._clock() >= self._next_refresh_at:
            self._start_refresh()
        return org_id in self._enrolled

    def _start_refresh(self) -> None:
        if os.getpid() != self._pid:
            # A forked child: the parent's refresh thread (and a lock it held) did not come along.
            self._pid = os.getpid()
            self._lock = threading.Lock()
        # A thread that finds a refresh under way keeps using the current copy rather than wait.
        if not self._lock.acquire(blocking=False):
            return
        # Nobody else starts one until this one is over and an interval has passed.
        self._next_refresh_at = float("inf")
        try:
            self._spawn(self._refresh_locked)
        except Exception:
            self._next_refresh_at = self._clock() + self._refresh_s
            self._lock.release()
            raise

    def refresh(self) -> None:
        """Re-read the hash now, in the caller's thread, unless a refresh is under way."""
        if not self._lock.acquire(blocking=False):
            return
        self._refresh_locked()

    def _refresh_locked(self) -> None:
        try:
            breaker = self._breaker
            if breaker is None or breaker.allow():
                try:
                    self._enrolled = self._flags.enrolled()
                except Exception as exc:
                    if breaker is not None:
                        breaker.record(exc)
                    self._enrolled = frozenset()
                    if self._on_error is not None:
                        self._on_error(exc)
                else:
                    if breaker is not None:
                        breaker.record_success()
        finally:
            # Counted from the end of the read, failed or not: a slow or failing Redis is asked
            # once per interval, never by every enqueue.
            self._next_refresh_at = self._clock() + self._refresh_s
            self._lock.release()


_views: weakref.WeakSet[OrgFlagsView] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for view in list(_views):
        view._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _in_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="mollifier-flags-refresh", daemon=True).start()
