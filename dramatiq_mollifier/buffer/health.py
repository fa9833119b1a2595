"""Checks of the buffer's Redis that an operator must hear about at startup.

An evicting ``maxmemory-policy`` (``allkeys-*``, ``volatile-*`` with entry expiry) lets Redis
delete buffered entries silently when it fills up: in ``divert`` mode the buffer holds the only
copy of each, so those messages would be lost without a trace. Only ``noeviction`` is safe: a
full Redis then refuses writes, the gate fails open and messages go to the broker instead.
"""

from __future__ import annotations

import logging
import threading

import redis

__all__ = ["SAFE_POLICY", "eviction_problem", "warn_about_eviction"]

logger = logging.getLogger(__name__)

#: The only ``maxmemory-policy`` that never deletes buffered entries.
SAFE_POLICY = "noeviction"


def eviction_problem(client: redis.Redis) -> str | None:
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


def warn_about_eviction(client: redis.Redis, *, background: bool = True) -> None:
    """Log a warning if :func:`eviction_problem` finds one; in a daemon thread by default, so
    that startup never waits on Redis."""

    def check() -> None:
        problem = eviction_problem(client)
        if problem is not None:
            logger.warning("mollifier.eviction_policy %s", problem)

    if background:
        threading.Thread(target=check, name="mollifier-eviction-check", daemon=True).start()
    else:
        check()
