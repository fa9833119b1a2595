"""Checks of the buffer's Redis that an operator must hear about at startup.

An evicting ``maxmemory-policy`` (``allkeys-*``, ``volatile-*`` with entry expiry) lets Redis
delete buffered entries silently when it fills up: in ``divert`` mode the buffer holds the only
copy of each, so those messages would be lost without a trace. Only ``noeviction`` is safe: a
full Redis then refuses writes, the gate fails open and messages go to the broker instead.

A ``buffer_wait_replicas`` above the replicas the primary has makes every buffer write wait out
``buffer_wait_timeout_ms`` and then fail open: each diverted send is slowed and goes to the broker
anyway, so bursts are not smoothed.

A process whose key layout (``slot_groups``) differs from the one recorded in the keyspace would
write entries no drainer of the fleet reads, or read where nobody writes: it must refuse to run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.sentinel import MasterNotFoundError

from .clients import is_cluster
from .keys import KeySpace

__all__ = [
    "SAFE_POLICY",
    "check_layout",
    "eviction_problem",
    "layout_problem",
    "misconfiguration",
    "recorded_layout_problem",
    "replica_problem",
    "warn_about_risks",
]

logger = logging.getLogger(__name__)

#: The only ``maxmemory-policy`` that never deletes buffered entries.
SAFE_POLICY = "noeviction"


def eviction_problem(client: Any) -> str | None:
    """Why the server's eviction policy endangers buffered entries, or None (safe, or unknown:
    managed services often refuse ``CONFIG GET``)."""
    try:
        reply = client.config_get("maxmemory-policy")
    except Exception:  # best effort, often from a background thread: never let it raise
        return None
    raw = next(iter(reply.values()), None) if reply else None
    if raw is None:
        return None
    policy = raw.decode() if isinstance(raw, bytes) else str(raw)
    if policy == SAFE_POLICY:
        return None
    return (
        f"the mollifier's Redis has maxmemory-policy {policy!r}: when it fills up, Redis deletes "
        "keys, buffered entries (the only copy of a diverted message) among them, without a trace. "
        f"Set maxmemory-policy {SAFE_POLICY} on that Redis (a full Redis then refuses writes and "
        "the gate sends to the broker instead), and cap runaway tenants (MOLLIFIER_CAP_PER_ENV)."
    )


def replica_problem(client: Any, wanted: int) -> str | None:
    """Why ``buffer_wait_replicas`` = ``wanted`` cannot be met now, or None (met, or unknown).
    On a cluster, the primary with the fewest replicas counts."""
    if not wanted:
        return None
    try:
        if is_cluster(client):
            replies = client.info("replication", target_nodes=client.PRIMARIES).values()
        else:
            replies = [client.info("replication")]
        connected = min(int(reply.get("connected_slaves", 0)) for reply in replies)
    except Exception:  # best effort, as for the eviction policy
        return None
    if connected >= wanted:
        return None
    return (
        f"buffer_wait_replicas (MOLLIFIER_BUFFER_WAIT_REPLICAS) is {wanted} but the mollifier's Redis "
        f"has {connected} connected replica(s): every buffer write will wait out "
        "buffer_wait_timeout_ms and fail open (the message goes to the broker as well), so bursts "
        "are not smoothed. Lower the setting or add replicas."
    )


def layout_problem(client: Any, keys: KeySpace) -> str | None:
    """Record this process's layout in the keyspace unless one is recorded (``SET NX``), and say
    why this process must not run if the recorded one differs; None when they agree. Raises
    the client's error when Redis cannot be asked."""
    client.set(keys.layout, f"slot_groups={keys.group_count}", nx=True)
    return recorded_layout_problem(client, keys)


def recorded_layout_problem(client: Any, keys: KeySpace) -> str | None:
    """:func:`layout_problem` without recording a layout when none is (an operator's tool)."""
    wanted = f"slot_groups={keys.group_count}"
    raw = client.get(keys.layout)
    found = raw.decode() if isinstance(raw, bytes) else str(raw)
    if raw is None or found == wanted:
        return None
    return (
        f"the buffer under key prefix {keys.user_prefix!r} was written with {found}, this process "
        f"runs with {wanted} (MOLLIFIER_SLOT_GROUPS): it would write where no drainer reads. Run "
        "every process with the same slot_groups; to change it, drain the buffer, delete "
        f"{keys.layout!r} and restart everything with the new value"
    )


#: How long the startup check waits on an unreachable Redis before saying so, in seconds.
UNREACHABLE_REPORT_S = 10

#: Replies of a server that is restarting or failing over, not refusing the settings.
_OUTAGES = (ClusterDownError, TryAgainError, BusyLoadingError, ReadOnlyError)
_OUTAGE_REPLIES = ("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")


def misconfiguration(exc: BaseException) -> bool:
    """Whether a Redis error says the settings are wrong rather than the server down."""
    if isinstance(exc, (MasterNotFoundError, redis.AuthenticationError)):
        return True  # a Sentinel service name, a password: subclasses of ConnectionError
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, *_OUTAGES)):
        return "Invalid Database" in str(exc)
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(_OUTAGE_REPLIES):
        return False  # (redis-py 5.0 leaves some of these a plain ResponseError)
    return isinstance(exc, (redis.RedisError, RedisClusterException))


def check_layout(
    client: Any, keys: KeySpace, on_problem: Callable[[str], None], on_match: Callable[[], None]
) -> threading.Thread:
    """Run :func:`layout_problem` in a daemon thread (startup never waits on Redis), retrying
    every second while Redis cannot be asked; ``on_problem`` gets the reason on a mismatch,
    ``on_match`` is called when the layouts agree."""

    def check() -> None:
        started, reported = time.monotonic(), False
        while True:
            try:
                problem = layout_problem(client, keys)
            except Exception as exc:  # the gate fails open meanwhile anyway
                # Said once: a Redis that refuses the mollifier (a wrong password or db, no
                # scripting, a cluster node or an unknown Sentinel service) or that has not
                # answered since startup is a setting to fix, not an outage to sit out
                unreachable = time.monotonic() - started > UNREACHABLE_REPORT_S
                if not reported and (misconfiguration(exc) or unreachable):
                    reported = True
                    logger.error(
                        "mollifier.redis_unusable the buffer's Redis (MOLLIFIER_REDIS_URL) %s: %s: "
                        "%s. Sends go to the broker undiverted until it answers",
                        "has not answered since startup" if unreachable else "refuses the mollifier",
                        type(exc).__name__,
                        exc,
                    )
                time.sleep(1)
                continue
            if problem is not None:
                logger.error("mollifier.layout_mismatch %s", problem)
                on_problem(problem)
            else:
                on_match()
            return

    thread = threading.Thread(target=check, name="mollifier-layout-check", daemon=True)
    thread.start()
    return thread


def warn_about_risks(client: Any, *, wait_replicas: int = 0, background: bool = True) -> None:
    """Log a warning for each problem :func:`eviction_problem` and :func:`replica_problem` find; in
    a daemon thread by default, so that startup never waits on Redis."""

    def check() -> None:
        problem = eviction_problem(client)
        if problem is not None:
            logger.warning("mollifier.eviction_policy %s", problem)
        problem = replica_problem(client, wait_replicas)
        if problem is not None:
            logger.warning("mollifier.replicas_missing %s", problem)

    if background:
        threading.Thread(target=check, name="mollifier-startup-check", daemon=True).start()
    else:
        check()
