"""The drain protocol: how drainers take entries out of the buffer and settle them.

Not public API: :class:`~dramatiq_mollifier.MollifierDrainer` is the way to drain. A pop moves
entries from QUEUED to DRAINING under a lease; each is then acked (gone), requeued (attempts + 1,
back at the tail), failed (dead-lettered) or released (back at the head, untried). An entry whose
lease expires is reclaimed by any drainer.

Each pop stamps its entries with an owner token of its own: a drainer settles them by naming it,
and a drainer whose lease was taken over (it expired and the entry was reclaimed, or popped
again elsewhere) is refused instead of acking or failing what another drainer now holds. The
owner renews the leases of entries whose handler still runs (:meth:`DrainProtocol.renew`). With
the owner check every settling script is safe to run twice; only the pop is not, so the drain
side's client must not retry commands (see :mod:`dramatiq_mollifier.drain.connections`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import NamedTuple

from ..models import BufferEntry
from .codec import boundary, texts, unpack_ids, unpack_popped
from .core import WRONG_TENANT, BufferCore
from .groups import GroupWindows, by_group, placeholder_org
from .keys import KeySpace
from .scripts import execute_many, run, run_pipelined

__all__ = ["Acked", "DrainProtocol", "Reclaimed"]

# A pop peeks at a few more ids than it wants, so a drainer that loses a race on the head of the
# queue to another drainer, or meets references that expired entries left, can usually still
# fill its batch in the same call; else it peeks again, at most _POP_ATTEMPTS times in all.
_PEEK_SLACK = 16
_POP_ATTEMPTS = 3
_RECLAIM_BATCH = 500


class Acked(NamedTuple):
    """What :meth:`DrainProtocol.ack_entries` did: entries removed, and those refused because
    their lease had passed to another owner (or they left DRAINING some other way)."""

    removed: int
    refused: list[BufferEntry]


class Reclaimed(NamedTuple):
    """What :meth:`DrainProtocol.reclaim` did with the entries whose lease expired: the ids put
    back in their queue, and the ids dead-lettered because their lease expired too often."""

    requeued: list[str]
    dead_lettered: list[str]


class DrainProtocol:
    """The drain side of ``buffer``: pops under a lease, and what settles a popped entry."""

    def __init__(self, buffer: BufferCore) -> None:
        self._buffer = buffer
        self.client = buffer.client
        self.keys = buffer.keys
        self.scripts = buffer.scripts
        self.ttl_ms = buffer.ttl_ms
        self.lease_ms = buffer.lease_ms
        self._groups = GroupWindows(self.keys.groups)

    # Which work there is ----------------------------------------------------------------------
    def org_window(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` orgs with QUEUED work, in order from the first one after ``after``
        (from the first of all when None), wrapping around to the first: one round trip whose
        cost depends on ``limit``, not on how many orgs have work.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if self.keys.group_count:  # even one group: its keys are not the one-server names
            return self._groups.org_window(self.client, after, limit)
        orgs = self.keys.orgs
        ranges: list[tuple[str | bytes | int, ...]] = [("ZRANGEBYLEX", orgs, "-", "+", "LIMIT", 0, limit)]
        if after is not None:
            bound = after.encode("utf-8")
            ranges = [
                ("ZRANGEBYLEX", orgs, b"(" + bound, "+", "LIMIT", 0, limit),
                ("ZRANGEBYLEX", orgs, "-", b"[" + bound, "LIMIT", 0, limit),
            ]
        with boundary("org_window"):
            replies = execute_many(self.client, ranges)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return texts([org for reply in replies for org in reply][:limit])

    def envs_of(self, org_ids: Sequence[str]) -> list[list[str] | None]:
        """:meth:`envs` of each org, in one round trip; None for an org whose envs could not be
        read (its key holds something else), so one bad key does not hide the other orgs.
        """
        with boundary("envs_of"):
            replies = execute_many(self.client, [("SMEMBERS", self.keys.envs(org_id)) for org_id in org_ids])
            return [None if isinstance(reply, Exception) else sorted(texts(reply)) for reply in replies]

    # Taking and settling ----------------------------------------------------------------------
    def peek(self, queue: str, count: int) -> list[str]:
        """The first ``count`` ids of an env's ``queue`` (``keys.tenant(org, env).queue``), in
        one string the client splits (``lua/peek.lua``): a pop's and a move's first look."""
        return unpack_ids(run(self.client, self.scripts.peek, 1, queue, count))

    def pop(self, org_id: str, env_id: str) -> BufferEntry | None:
        """The oldest QUEUED entry of the env, moved to DRAINING under a lease, or None."""
        entries = self.pop_many(org_id, env_id, 1)
        return entries[0] if entries else None

    def pop_many(self, org_id: str, env_id: str, limit: int, *, max_bytes: int = 0) -> list[BufferEntry]:
        """Up to ``limit`` entries as :meth:`pop` would return them, in one round trip.

        Two round trips in fact: a peek at the head of the queue (LRANGE), then the script that
        pops, since the script must be given the key of every entry it touches. A drainer that
        loses the head to a concurrent pop peeks again, at most a few times. ``max_bytes``
        bounds the payload bytes popped (the first entry is popped whatever its size); 0 for no
        bound. Every entry popped carries the pop's owner token (:attr:`BufferEntry.lease_owner`).

        Not safe to retry: a pop whose reply is lost leaves its entries leased to an owner
        nobody holds, until the lease expires.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        t = self.keys.tenant(org_id, env_id)
        keys = t.space  # the org's group
        owner = uuid.uuid4().hex
        entries: list[BufferEntry] = []
        budget = max_bytes
        with boundary("pop"):
            for _ in range(_POP_ATTEMPTS):
                wanted = limit - len(entries)
                ids = self.peek(t.queue, wanted + _PEEK_SLACK)
                reply = run(
                    self.client,
                    self.scripts.pop,
                    8 + len(ids),
                    t.queue,
                    t.envs,
                    keys.orgs,
                    keys.leases,
                    keys.depth,
                    *keys.index_keys,
                    *map(keys.entry, ids),
                    org_id,
                    env_id,
                    wanted,
                    self.lease_ms,
                    owner,
                    budget,
                    # After a first call that popped some, the next one's first entry is not free.
                    1 if entries else 0,
                    *ids,
                )
                popped = list(unpack_popped(reply[1], org_id, env_id, owner))
                entries += popped
                if max_bytes:
                    budget -= sum(len(entry.payload) for entry in popped)
                if reply[0] == 0 or len(entries) >= limit or (max_bytes and budget <= 0):
                    break
        return entries

    def ack(
        self,
        message_id: str,
        *,
        org_id: str | None = None,
        env_id: str | None = None,
        owner: str | None = None,
    ) -> int:
        """Remove the entry (any status) and everything that refers to it.

        ``org_id`` and ``env_id``, when the caller knows them (from a popped entry), save the
        round trip that looks them up. A wrong guess costs that round trip, nothing else.
        ``owner``: the pop's owner token; the ack is then refused (nothing changes) unless the
        entry is still DRAINING under that pop's lease. Returns 1 when removed, 0 when missing,
        :data:`~.core.STALE_OWNER` when refused.
        """
        with boundary("ack"):
            return self._buffer.entry_op(self.scripts.ack, message_id, org_id, env_id, (owner or "",))

    def ack_many(self, message_ids: Sequence[str]) -> int:
        """:meth:`ack` several entries in one round trip; returns how many existed.

        Two round trips in fact, each pipelined: the tenants of the entries, then the acks.
        """
        if not message_ids:
            return 0
        with boundary("ack_many"):
            tenants = self._buffer.tenants_of(message_ids)
            present = [
                (mid, tenant) for mid, tenant in zip(message_ids, tenants, strict=True) if tenant is not None
            ]
            if not present:
                return 0
            answers = run_pipelined(
                self.client,
                self.scripts.ack,
                [self._buffer.entry_op_call(mid, org, env, ()) for mid, (org, env) in present],
            )
            removed = 0
            for (message_id, _), answer in zip(present, answers, strict=True):
                result = int(answer)
                if result == WRONG_TENANT:
                    result = self._buffer.entry_op(self.scripts.ack, message_id, None, None, ())
                removed += result == 1
            return removed

    def ack_entries(self, entries: Sequence[BufferEntry]) -> Acked:
        """:meth:`ack` entries this process popped, in one round trip, each only while its pop
        still holds its lease.

        The entries' tenants and owner tokens come from the entries, so nothing is looked up:
        one script removes every entry still DRAINING under the lease of its pop. Any other (its
        lease expired and it was reclaimed, say) is refused and returned; one already gone (an
        ack retried after a lost reply) is skipped. Safe to retry.
        """
        if not entries:
            return Acked(0, [])
        calls = []
        for group in by_group(self.keys, entries):
            keys = group[0][1]
            entry_keys: list[str] = []
            args: list[str] = []
            for entry, _ in group:
                entry_keys.append(keys.entry(entry.message_id))
                args += (entry.message_id, entry.org_id, entry.env_id, entry.lease_owner or "")
            calls.append(([keys.leases, keys.depth, *keys.index_keys, *entry_keys], args))
        with boundary("ack_entries"):
            if len(calls) == 1:
                keys_, args_ = calls[0]
                replies = [run(self.client, self.scripts.ack_draining, len(keys_), *keys_, *args_)]
            else:
                replies = run_pipelined(self.client, self.scripts.ack_draining, calls)
            ordered = [entry for group in by_group(self.keys, entries) for entry, _ in group]
            removed, refused, offset = 0, [], 0
            for group, reply in zip(by_group(self.keys, entries), replies, strict=True):
                removed += int(reply[0])
                refused += [ordered[offset + int(position) - 1] for position in reply[1:]]
                offset += len(group)
            return Acked(removed, refused)

    def release(self, entries: Sequence[BufferEntry]) -> int:
        """Give back popped entries whose handler never ran; returns how many went back.

        For a drainer that stops with entries popped but not yet handled: each still DRAINING
        is QUEUED again at the head of its queue, in the same order, attempts unchanged.
        """
        if not entries:
            return 0
        calls = [
            self._buffer.entry_op_call(e.message_id, e.org_id, e.env_id, (self.ttl_ms, e.lease_owner or ""))
            for e in reversed(entries)
        ]
        with boundary("release"):
            answers = run_pipelined(self.client, self.scripts.release, calls)
        self._groups.forget_empty()  # the entries are queued again: read every group next tick
        return sum(int(answer) == 1 for answer in answers)

    def requeue(
        self,
        message_id: str,
        *,
        org_id: str | None = None,
        env_id: str | None = None,
        owner: str | None = None,
    ) -> bool:
        """attempts + 1, back to QUEUED at the tail of its env's queue. False if missing (or
        refused: ``owner`` no longer holds its lease).

        ``org_id``/``env_id``/``owner``: as for :meth:`ack`.
        """
        with boundary("requeue"):
            extra = (self.ttl_ms, owner or "")
            requeued = self._buffer.entry_op(self.scripts.requeue, message_id, org_id, env_id, extra) == 1
        if requeued:
            self._groups.forget_empty()
        return requeued

    def fail(
        self,
        message_id: str,
        *,
        code: str,
        message: str,
        org_id: str | None = None,
        env_id: str | None = None,
        owner: str | None = None,
    ) -> bool:
        """Mark FAILED with the last error and keep it in its env's dead-letter set.

        False (and nothing created) if the entry is missing, or refused (``owner`` no longer
        holds its lease). ``org_id``/``env_id``/``owner``: as for :meth:`ack`.
        """
        with boundary("fail"):
            args = (code, message, self.ttl_ms, owner or "")
            return self._buffer.entry_op(self.scripts.fail, message_id, org_id, env_id, args) == 1

    def renew(self, entries: Sequence[BufferEntry]) -> list[BufferEntry]:
        """Push back the lease deadline of popped entries (a lease from now) for the owner that
        popped each; returns those another owner or status holds now (reclaimed, requeued). One
        gone meanwhile (acked) is neither renewed nor returned; an entry without an owner token is
        never renewed. One round trip.
        """
        if not entries:
            return []
        lost: list[BufferEntry] = []
        for group in by_group(self.keys, entries):
            keys = group[0][1]
            args: list[str | int] = [self.lease_ms]
            for entry, _ in group:
                args += (entry.message_id, entry.lease_owner or "")
            with boundary("renew"):
                positions = run(
                    self.client,
                    self.scripts.renew,
                    len(group) + 1,
                    keys.leases,
                    *(keys.entry(entry.message_id) for entry, _ in group),
                    *args,
                )
            lost += [group[int(position) - 1][0] for position in positions]
        return lost

    def reclaim_expired(self) -> list[str]:
        """Return DRAINING entries whose lease has expired to their queue; their ids."""
        return self.reclaim().requeued

    def reclaim(self, *, max_expiries: int = 0) -> Reclaimed:
        """Return DRAINING entries whose lease has expired to their queue, or dead-letter those
        whose lease has now expired ``max_expiries`` times (error code ``LeaseExpired``; 0:
        never): an entry no drainer manages to settle is dead-lettered instead of looping.
        """
        reclaimed: list[str] = []
        dead_lettered: list[str] = []
        with boundary("reclaim_expired"):
            for group in self.keys.groups:
                self._reclaim_group(group, max_expiries, reclaimed, dead_lettered)
        if reclaimed:
            self._groups.forget_empty()
        return Reclaimed(reclaimed, dead_lettered)

    def _reclaim_group(
        self, group: KeySpace, max_expiries: int, reclaimed: list[str], dead_lettered: list[str]
    ) -> None:
        while True:
            ids = texts(self.scripts.expired_leases(keys=(group.leases,), args=(_RECLAIM_BATCH,)))
            if not ids:
                break
            calls = []
            for message_id, tenant in zip(ids, self._buffer.tenants_of(ids), strict=True):
                # A lease whose entry is gone is dropped by the script, which gives the
                # entry's depth counts back under the tenant its pop recorded; any tenant
                # will do here.
                unknown = ("", "") if group is self.keys else (placeholder_org(self.keys, group), "")
                org_id, env_id = tenant or unknown
                calls.append(
                    self._buffer.entry_op_call(message_id, org_id, env_id, (self.ttl_ms, max_expiries))
                )
            answers = run_pipelined(self.client, self.scripts.reclaim, calls)
            for message_id, answer in zip(ids, answers, strict=True):
                result = int(answer)
                if result == WRONG_TENANT:
                    result = self._buffer.entry_op(
                        self.scripts.reclaim, message_id, None, None, (self.ttl_ms, max_expiries)
                    )
                if result == 1:
                    reclaimed.append(message_id)
                elif result == 2:
                    dead_lettered.append(message_id)
            if len(ids) < _RECLAIM_BATCH:
                break
