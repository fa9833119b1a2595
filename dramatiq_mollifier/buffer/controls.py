"""``TenantControls``: what an operator does to one message or one tenant of the buffer.

Built like :class:`~dramatiq_mollifier.buffer.admin.BufferAdmin`, from a ``redis.Redis`` client
(``decode_responses=False``) and the key prefix, or taken from a buffer
(``MollifierBuffer.controls``). Every call is a few round trips, whatever the buffer holds.

API (stable: the dashboard builds on it):

==========================================================  =====================================
``lookup(message_id) -> MessageLookup``                     ``state`` in ``queued``, ``draining``,
                                                            ``dead_lettered``, ``absent``; org,
                                                            env, attempts, age, position, error
``cancel(message_ids) -> int``                              cancel buffered messages by id
``cancel_tenant(org_id, env_id=None) -> int``               cancel an env's or an org's backlog
``pause(org_id, env_id=None) -> bool``                      hold an org or an env in the buffer
``resume(org_id, env_id=None) -> bool``                     let it drain again
``paused() -> list[PausedTenant]``                          every pause, by org then env
``set_cap(org_id, env_id=None, *, limit)``                  runtime cap override (None: remove)
``caps() -> list[TenantCap]``                               every runtime cap override
``set_weight(org_id, weight)``                              drain weight of an org (None: 1)
``weights() -> dict[str, int]``                             every weight override
``tenants(offset, limit, filter, sort) -> TenantPage``      the tenant listing, one page
==========================================================  =====================================

Cancel wins over a drain: a cancelled entry is removed at once; a drainer that popped it a moment
before checks right before its broker write and drops it (counted as ``cancelled`` in
``mollifier.drained``). Pause, caps and weights are runtime rules in three small hashes (see
:mod:`.rules`) that every process re-reads in the background at least once a second.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from ..models import MessageLookup, PausedTenant, TenantCap, TenantPage
from ..settings import MollifierSettings

__all__ = ["TENANT_SORTS", "TenantControls"]

#: The orders :meth:`TenantControls.tenants` can sort by: org then env (default), depth
#: (deepest first), oldest (oldest queued entry first).
TENANT_SORTS = ("org", "depth", "oldest")


class TenantControls:
    """Look up, cancel, pause, cap and weigh buffered work.

    Parameters:
      client: A ``redis.Redis`` client with ``decode_responses=False``.
      key_prefix: The prefix of every key. Defaults to ``mollifier``.
      settings: The settings the fleet runs with, for the listing's ``enrolled`` and ``cap``
        columns (static enrolment, settings caps). Defaults to None: ``enrolled`` is None and
        only runtime caps show.
    """

    def __init__(
        self, client: redis.Redis, *, key_prefix: str = "mollifier", settings: MollifierSettings | None = None
    ) -> None:
        raise NotImplementedError

    # One message ----------------------------------------------------------------------------
    def lookup(self, message_id: str) -> MessageLookup:
        """Where ``message_id`` is: queued (with its 0-based position in its env's queue),
        draining, dead-lettered (with its error), or absent."""
        raise NotImplementedError

    def cancel(self, message_ids: Iterable[str]) -> int:
        """Remove buffered (QUEUED or DRAINING) messages; returns how many were buffered.

        A DRAINING one never reaches the broker: its drainer checks before the broker write.
        Dead letters are left alone (``failed purge`` deletes them).
        """
        raise NotImplementedError

    def cancel_tenant(self, org_id: str, env_id: str | None = None) -> int:
        """Cancel every buffered message of an env, or of every env of an org; how many."""
        raise NotImplementedError

    # Pause ----------------------------------------------------------------------------------
    def pause(self, org_id: str, env_id: str | None = None) -> bool:
        """Hold an org (every env) or one env in the buffer: its new sends are buffered whatever
        their rate, and drainers skip it. False if it was already paused."""
        raise NotImplementedError

    def resume(self, org_id: str, env_id: str | None = None) -> bool:
        """Undo :meth:`pause`; False if it was not paused (an env of a paused org stays held)."""
        raise NotImplementedError

    def paused(self) -> list[PausedTenant]:
        """Every pause in force, sorted by org then env (org-wide ones first)."""
        raise NotImplementedError

    # Caps -----------------------------------------------------------------------------------
    def set_cap(self, org_id: str, env_id: str | None = None, *, limit: int | None) -> None:
        """Override the cap on buffered messages of an org (``env_id`` None) or an env;
        ``limit=None`` removes the override (the settings' cap applies again)."""
        raise NotImplementedError

    def caps(self) -> list[TenantCap]:
        """Every runtime cap override, sorted by org then env."""
        raise NotImplementedError

    # Weights --------------------------------------------------------------------------------
    def set_weight(self, org_id: str, weight: int | None) -> None:
        """An org's share of the drain, relative to the default 1; None removes the override."""
        raise NotImplementedError

    def weights(self) -> dict[str, int]:
        """Every weight override, org id to weight."""
        raise NotImplementedError

    # Listing --------------------------------------------------------------------------------
    def tenants(
        self, offset: int = 0, limit: int = 100, filter: str | None = None, sort: str = "org"
    ) -> TenantPage:
        """One page of the envs with buffered work (and envs with a pause or cap of their own).

        ``filter`` keeps the envs whose org or env id contains it; ``sort`` is one of
        :data:`TENANT_SORTS`. Reads the depth counters, the rule hashes and the tripped
        registry, then the oldest entry of the page's envs only (of every env for
        ``sort="oldest"``): never every entry.
        """
        raise NotImplementedError
