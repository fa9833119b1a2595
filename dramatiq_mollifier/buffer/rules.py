"""The operator's runtime rules per tenant: pauses, cap overrides, drain weights.

Three small hashes (see :mod:`.keys`): ``{p}:paused`` and ``{p}:caps`` hold fields named like the
depth hash's (``org:<org>`` for an org, ``env:<tag>`` for an env), ``{p}:weights`` raw org ids.
:func:`read_rules` reads all three in one pipelined round trip into a :class:`TenantRules`
snapshot; :class:`RulesView` keeps a fresh snapshot in every process (the gate and the drainer
read it without I/O), re-read by a background thread every ``refresh_ms``, so a pause reaches the
whole fleet within a second whether or not anything is being sent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import redis

from .codec import text
from .keys import KeySpace, parse_tenant_tag, tenant_tag

__all__ = [
    "DEFAULT_WEIGHT",
    "MAX_WEIGHT",
    "RULES_REFRESH_MS",
    "NO_RULES",
    "PID_CHECK_MS",
    "RulesView",
    "TenantRules",
    "org_field",
    "read_rules",
    "tenant_field",
]

logger = logging.getLogger(__name__)

#: How often every process re-reads the rules, in milliseconds: a pause is live within about this
#: plus one round trip.
RULES_REFRESH_MS = 500
#: How often a read of the view checks whether the process forked (and needs a refresh thread of
#: its own), in milliseconds, when no fork hook told it.
PID_CHECK_MS = 50
#: The drain weight of an org without an override.
DEFAULT_WEIGHT = 1
#: The largest weight accepted: an org with it is served this many times per round.
MAX_WEIGHT = 100


def org_field(org_id: str) -> str:
    """The rule field of a whole org."""
    return f"org:{org_id}"


def tenant_field(org_id: str, env_id: str | None) -> str:
    """The rule field of an org (``env_id`` None) or of one env."""
    if env_id is None:
        return org_field(org_id)
    return f"env:{tenant_tag(org_id, env_id)}"


def parse_field(name: bytes) -> tuple[str, str | None] | None:
    """``(org, env or None)`` of a rule field; None if it is not one."""
    kind, _, rest = name.partition(b":")
    if kind == b"org":
        return rest.decode(), None
    if kind == b"env":
        try:
            return parse_tenant_tag(rest)
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class TenantRules:
    """One snapshot of the rules. Lookups cost a dict access or two."""

    #: (org, None) for a paused org, (org, env) for a paused env -> paused at (ms).
    paused: Mapping[tuple[str, str | None], int] = field(default_factory=dict)
    #: (org, None) or (org, env) -> runtime cap.
    caps: Mapping[tuple[str, str | None], int] = field(default_factory=dict)
    #: org -> weight (only overrides).
    weights: Mapping[str, int] = field(default_factory=dict)

    def is_paused(self, org_id: str, env_id: str) -> bool:
        """Whether the env, or its whole org, is paused."""
        paused = self.paused
        return bool(paused) and ((org_id, None) in paused or (org_id, env_id) in paused)

    def org_paused(self, org_id: str) -> bool:
        """Whether the whole org is paused."""
        return (org_id, None) in self.paused

    def weight(self, org_id: str) -> int:
        """The org's drain weight."""
        return self.weights.get(org_id, DEFAULT_WEIGHT)

    def limits(
        self, org_id: str, env_id: str, default_env: int | None, default_org: int | None
    ) -> tuple[int | None, int | None]:
        """The (env cap, org cap) in force: the runtime override, else the settings' default."""
        caps = self.caps
        if not caps:
            return default_env, default_org
        return caps.get((org_id, env_id), default_env), caps.get((org_id, None), default_org)


#: The rules when none were read yet, or none are set.
NO_RULES = TenantRules()


def read_rules(client: redis.Redis, keys: KeySpace) -> TenantRules:
    """Every rule, in one pipelined round trip (raises the Redis error)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.paused)
    pipe.hgetall(keys.caps)
    pipe.hgetall(keys.weights)
    paused_raw, caps_raw, weights_raw = pipe.execute()
    if not (paused_raw or caps_raw or weights_raw):
        return NO_RULES
    return TenantRules(
        paused=_parse_tenant_hash(paused_raw),
        caps=_parse_tenant_hash(caps_raw),
        weights=_parse_weights(weights_raw),
    )


def _parse_tenant_hash(raw: Mapping[bytes, bytes]) -> dict[tuple[str, str | None], int]:
    parsed: dict[tuple[str, str | None], int] = {}
    for name, value in raw.items():
        tenant = parse_field(name)
        try:
            number = int(value)
        except ValueError:
            number = -1
        if tenant is None or number < 0:
            logger.warning("mollifier: ignoring malformed rule %r = %r", name, value)
            continue
        parsed[tenant] = number
    return parsed


def _parse_weights(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    weights: dict[str, int] = {}
    for name, value in raw.items():
        try:
            weight = int(value)
        except ValueError:
            weight = 0
        if not 1 <= weight <= MAX_WEIGHT:
            logger.warning("mollifier: ignoring malformed weight %r = %r", name, value)
            continue
        weights[text(name)] = weight
    return weights


class RulesView:
    """A process-local copy of the rules, re-read every ``refresh_ms`` by a daemon thread.

    :meth:`current` never waits on Redis: it returns the last snapshot and (first call, or in a
    forked child) starts the refresh thread. A failed read keeps the last snapshot (a pause must
    not lapse because Redis blinked) and calls ``on_error``.

    Parameters:
      read: Reads a snapshot (``lambda: read_rules(client, keys)``).
      refresh_ms: The pause between two reads. Defaults to :data:`RULES_REFRESH_MS`.
      on_error: Called with the exception of a failed read. Defaults to a debug log.
    """

    def __init__(
        self,
        read: Callable[[], TenantRules],
        *,
        refresh_ms: int = RULES_REFRESH_MS,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        if refresh_ms < 1:
            raise ValueError(f"refresh_ms must be at least 1, got {refresh_ms}")
        self._read = read
        self._refresh_s = refresh_ms / 1000
        self._on_error = on_error
        self._rules = NO_RULES
        self._pid: int | None = None
        self._check_pid_at = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        _views.add(self)

    def current(self) -> TenantRules:
        """The last snapshot read (the empty one until the first read finished)."""
        # Every send reads this: the process id (a system call) is checked at most every
        # PID_CHECK_MS. A fork CPython runs its hooks for is seen at the child's first call; a
        # C-level fork (uwsgi without py-call-osafterfork) within PID_CHECK_MS at worst.
        now = time.monotonic()
        if now >= self._check_pid_at:
            self._check_pid_at = now + PID_CHECK_MS / 1000
            if self._pid != os.getpid():
                self._start()
        return self._rules

    def refresh(self) -> TenantRules:
        """Read the rules now, in the caller's thread; the snapshot (the last one on failure)."""
        try:
            self._rules = self._read()
        except Exception as exc:
            if self._on_error is not None:
                self._on_error(exc)
            else:
                logger.debug("mollifier: could not read the tenant rules", exc_info=True)
        return self._rules

    def close(self) -> None:
        """Stop the refresh thread."""
        self._stop.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked child: the parent's thread did not come along.
            self._pid = os.getpid()
            self._stop = threading.Event()
            threading.Thread(
                target=_refresh_loop,
                args=(weakref.ref(self), self._stop, self._refresh_s),
                name="mollifier-rules-refresh",
                daemon=True,
            ).start()


_views: weakref.WeakSet[RulesView] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's refresh threads did not come along: each view checks at its next read.
    for view in list(_views):
        view._check_pid_at = float("-inf")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _refresh_loop(view_ref: weakref.ref[RulesView], stop: threading.Event, interval_s: float) -> None:
    """Refresh the view until it is closed or garbage (a weak reference: the thread never keeps
    a discarded middleware, its client and its connections alive)."""
    while True:
        view = view_ref()
        if view is None:
            return
        view.refresh()
        del view
        if stop.wait(interval_s):
            return
