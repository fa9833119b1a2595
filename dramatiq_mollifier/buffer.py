"""The Redis buffer that holds diverted messages until a drainer puts them back on the broker.

Every multi-step operation is one atomic Lua script from ``lua/``; Redis errors are wrapped in
:class:`BufferUnavailableError` here, at the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis

from .models import BufferEntry, Tenant, TripDecision

__all__ = ["DEFAULT_LEASE_MS", "MollifierBuffer"]

#: How long a popped entry may stay DRAINING before any drainer reclaims it.
DEFAULT_LEASE_MS = 60_000


class MollifierBuffer:
    """Per-env FIFO queues of buffered messages, with org/env indexes, leases and dead letters.

    Parameters:
      client: A ``redis.Redis`` client with ``decode_responses=False``.
      key_prefix: The prefix of every key. Defaults to ``mollifier``.
      entry_ttl_s: Expiry of QUEUED entries in seconds. Defaults to None: no expiry, since in
        ``divert`` mode the buffer holds the only copy of a message.
      lease_ms: How long a popped entry stays DRAINING before it may be reclaimed.
        Defaults to 60 seconds.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "mollifier",
        entry_ttl_s: int | None = None,
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> None:
        raise NotImplementedError

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> MollifierBuffer:
        """Build a buffer over a new client for ``url`` with bounded socket timeouts."""
        raise NotImplementedError

    # Enqueue side ---------------------------------------------------------------------------
    def accept(self, message_id: str, *, org_id: str, env_id: str, payload: bytes) -> bool:
        """Store a QUEUED entry and append it to its env's queue. False if the id exists."""
        raise NotImplementedError

    def evaluate_trip(
        self, org_id: str, env_id: str, *, window_ms: int, threshold: int, hold_ms: int
    ) -> TripDecision:
        """Count one enqueue for the env and say whether it is tripped (one round trip)."""
        raise NotImplementedError

    def evaluate_trip_and_accept(
        self,
        message_id: str,
        *,
        org_id: str,
        env_id: str,
        payload: bytes,
        window_ms: int,
        threshold: int,
        hold_ms: int,
    ) -> tuple[TripDecision, bool]:
        """``evaluate_trip`` then, only when tripped, ``accept``: one script, one round trip.

        Returns the decision and whether the entry was accepted (False when not tripped or when
        the id already exists).
        """
        raise NotImplementedError

    # Drain side -----------------------------------------------------------------------------
    def pop(self, org_id: str, env_id: str) -> BufferEntry | None:
        """The oldest QUEUED entry of the env, moved to DRAINING under a lease, or None."""
        raise NotImplementedError

    def pop_many(self, org_id: str, env_id: str, limit: int) -> list[BufferEntry]:
        """Up to ``limit`` entries as :meth:`pop` would return them, in one round trip."""
        raise NotImplementedError

    def ack(self, message_id: str) -> None:
        """Remove the entry (any status) and everything that refers to it."""
        raise NotImplementedError

    def ack_many(self, message_ids: Sequence[str]) -> int:
        """:meth:`ack` several entries in one round trip; returns how many existed."""
        raise NotImplementedError

    def requeue(self, message_id: str) -> bool:
        """attempts + 1, back to QUEUED at the tail of its env's queue. False if missing."""
        raise NotImplementedError

    def fail(self, message_id: str, *, code: str, message: str) -> bool:
        """Mark FAILED with the last error and keep it in its env's dead-letter set."""
        raise NotImplementedError

    def reclaim_expired(self) -> list[str]:
        """Return DRAINING entries whose lease has expired to their queue; their ids."""
        raise NotImplementedError

    # Dead letters ---------------------------------------------------------------------------
    def retry_failed(self, message_id: str) -> bool:
        """Put a FAILED entry back in its queue with attempts reset. False if not FAILED."""
        raise NotImplementedError

    def purge_failed(self, org_id: str | None = None, env_id: str | None = None) -> int:
        """Delete FAILED entries (all, an org's, or an env's); returns how many."""
        raise NotImplementedError

    # Inspection -----------------------------------------------------------------------------
    def get(self, message_id: str) -> BufferEntry | None:
        """The entry, in any status, or None."""
        raise NotImplementedError

    def orgs(self) -> list[str]:
        """Orgs with QUEUED work, sorted."""
        raise NotImplementedError

    def envs(self, org_id: str) -> list[str]:
        """Envs of ``org_id`` with QUEUED work, sorted."""
        raise NotImplementedError

    def failed(self, org_id: str | None = None, env_id: str | None = None) -> list[BufferEntry]:
        """FAILED entries, oldest failure first."""
        raise NotImplementedError

    def depth(self, org_id: str | None = None, env_id: str | None = None) -> int:
        """QUEUED + DRAINING entries in total, of an org, or of an env (no keyspace scan)."""
        raise NotImplementedError

    def oldest_created_at(self, org_id: str, env_id: str) -> datetime | None:
        """When the oldest QUEUED entry of the env was accepted, or None if it has none."""
        raise NotImplementedError

    def tripped(self) -> list[Tenant]:
        """Envs whose trip marker is live now."""
        raise NotImplementedError
