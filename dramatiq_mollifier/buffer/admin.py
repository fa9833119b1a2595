"""The operator's side of the buffer: inspection (depth, orgs, envs, tripped envs, one entry)
and dead-letter administration (list, retry, purge). The CLI and the demo read through it.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from ..models import BufferEntry, EntryStatus, Tenant
from .codec import boundary, check_scope, entry_from_hash, last_error, text, texts, to_datetime
from .core import BufferCore
from .keys import DEPTH_TOTAL_FIELD, parse_tenant_tag
from .scripts import run

__all__ = ["BufferAdmin", "FailedPage"]

_PURGE_BATCH = 500
_OLDEST_WINDOW = 50


class FailedPage(NamedTuple):
    """The oldest dead letters, without their payloads (``payload`` is ``b""``)."""

    entries: list[BufferEntry]
    #: The size of each entry's payload, in bytes.
    payload_bytes: list[int]
    #: Dead letters matching the filter, listed or not.
    total: int


class BufferAdmin(BufferCore):
    """Inspection and dead-letter administration; :class:`MollifierBuffer` adds the send side."""

    # Dead letters ---------------------------------------------------------------------------
    def retry_failed(self, message_id: str) -> bool:
        """Put a FAILED entry back in its queue with attempts reset. False if not FAILED."""
        with boundary("retry_failed"):
            return self.entry_op(self.scripts.retry_failed, message_id, None, None, (self.ttl_ms,)) == 1

    def purge_failed(self, org_id: str | None = None, env_id: str | None = None) -> int:
        """Delete FAILED entries (all, an org's, or an env's); returns how many."""
        check_scope(org_id, env_id)
        keys = self.keys
        deleted = 0
        with boundary("purge_failed"):
            for org, env in self._failed_tenants(org_id, env_id):
                t = keys.tenant(org, env)
                while True:
                    ids = texts(self.client.zrange(t.failed, 0, _PURGE_BATCH - 1))
                    deleted += self.scripts.purge_failed(
                        keys=[t.failed, t.failed_envs, t.space.failed_orgs, *map(t.space.entry, ids)],
                        args=[org, env, *ids],
                    )
                    if len(ids) < _PURGE_BATCH:
                        break
        return deleted

    # Inspection -----------------------------------------------------------------------------
    def get(self, message_id: str) -> BufferEntry | None:
        """The entry, in any status, or None."""
        with boundary("get"):
            if not self.keys.group_count:  # slot_groups=1 has a group of its own, not these names
                fields = self.client.hgetall(self.keys.entry(message_id))
                return entry_from_hash(message_id, fields) if fields else None
            pipe = self.client.pipeline(transaction=False)
            for group in self.keys.groups:  # the entry may be in any group
                pipe.hgetall(group.entry(message_id))
            found = next((fields for fields in pipe.execute() if fields), None)
            return entry_from_hash(message_id, found) if found else None

    def orgs(self) -> list[str]:
        """Orgs with QUEUED work, sorted."""
        with boundary("orgs"):
            pipe = self.client.pipeline(transaction=False)
            for group in self.keys.groups:
                pipe.zrange(group.orgs, 0, -1)
            return sorted(org for reply in pipe.execute() for org in texts(reply))

    def envs(self, org_id: str) -> list[str]:
        """Envs of ``org_id`` with QUEUED work, sorted."""
        with boundary("envs"):
            return sorted(text(env) for env in self.client.smembers(self.keys.envs(org_id)))

    def failed(self, org_id: str | None = None, env_id: str | None = None) -> list[BufferEntry]:
        """FAILED entries, oldest failure first."""
        check_scope(org_id, env_id)
        found: list[tuple[float, BufferEntry]] = []
        with boundary("failed"):
            members: list[tuple[str, str, str, float]] = []
            tenants = self._failed_tenants(org_id, env_id)
            pipe = self.client.pipeline(transaction=False)
            for org, env in tenants:
                pipe.zrange(self.keys.tenant(org, env).failed, 0, -1, withscores=True)
            for (org, env), pairs in zip(tenants, pipe.execute(), strict=True):
                members.extend((text(member), org, env, float(score)) for member, score in pairs)
            pipe = self.client.pipeline(transaction=False)
            for message_id, org, _, _ in members:
                pipe.hgetall(self.keys.group_of(org).entry(message_id))
            for (message_id, org, env, failed_at), fields in zip(members, pipe.execute(), strict=True):
                if not fields:
                    continue  # expired (entry_ttl_s) since it failed
                entry = entry_from_hash(message_id, fields)
                if entry.status is EntryStatus.FAILED and (entry.org_id, entry.env_id) == (org, env):
                    found.append((failed_at, entry))
        found.sort(key=lambda item: (item[0], item[1].message_id))
        return [entry for _, entry in found]

    def failed_page(self, org_id: str | None = None, env_id: str | None = None, *, limit: int) -> FailedPage:
        """The ``limit`` oldest dead letters and how many there are, reading only those entries
        (and no payload): at most ``limit`` ids per env, then the fields of ``limit`` entries."""
        check_scope(org_id, env_id)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        keys = self.keys
        with boundary("failed_page"):
            tenants = self._failed_tenants(org_id, env_id)
            pipe = self.client.pipeline(transaction=False)
            for org, env in tenants:
                pipe.zcard(keys.tenant(org, env).failed)
                pipe.zrange(keys.tenant(org, env).failed, 0, limit - 1, withscores=True)
            replies = pipe.execute()
            total = sum(int(n) for n in replies[0::2])
            members = sorted(
                (float(score), text(member), org)
                for (org, _), pairs in zip(tenants, replies[1::2], strict=True)
                for member, score in pairs
            )[:limit]
            pipe = self.client.pipeline(transaction=False)
            for _, message_id, org in members:
                entry = keys.group_of(org).entry(message_id)
                pipe.hmget(
                    entry, "org", "env", "status", "attempts", "created_at_ms", "error_code", "error_message"
                )
                pipe.hstrlen(entry, "payload")
            replies = pipe.execute()
        entries, sizes = [], []
        for (_, message_id, _), fields, size in zip(members, replies[0::2], replies[1::2], strict=True):
            org, env, status, attempts, created_at_ms, code, message = fields
            if status != b"FAILED":
                continue  # expired (entry_ttl_s) or retried since it was listed
            entries.append(
                BufferEntry(
                    message_id=message_id,
                    org_id=text(org),
                    env_id=text(env),
                    payload=b"",
                    status=EntryStatus.FAILED,
                    attempts=int(attempts),
                    created_at=to_datetime(created_at_ms),
                    last_error=last_error(code, message),
                )
            )
            sizes.append(int(size))
        return FailedPage(entries, sizes, total)

    def failed_counts(self, org_id: str | None = None) -> dict[tuple[str, str], int]:
        """Dead letters per (org, env), counted without reading an entry."""
        with boundary("failed_counts"):
            tenants = self._failed_tenants(org_id, None)
            pipe = self.client.pipeline(transaction=False)
            for org, env in tenants:
                pipe.zcard(self.keys.tenant(org, env).failed)
            return {t: int(n) for t, n in zip(tenants, pipe.execute(), strict=True) if int(n)}

    def failed_ids(self, org_id: str | None = None, env_id: str | None = None) -> list[str]:
        """The ids of every dead letter (no entry read), oldest failure first within each env."""
        check_scope(org_id, env_id)
        with boundary("failed_ids"):
            tenants = self._failed_tenants(org_id, env_id)
            pipe = self.client.pipeline(transaction=False)
            for org, env in tenants:
                pipe.zrange(self.keys.tenant(org, env).failed, 0, -1)
            return [text(member) for members in pipe.execute() for member in members]

    def depth(self, org_id: str | None = None, env_id: str | None = None) -> int:
        """QUEUED + DRAINING entries in total, of an org, or of an env (no keyspace scan)."""
        check_scope(org_id, env_id)
        if org_id is None:
            field = DEPTH_TOTAL_FIELD
        elif env_id is None:
            field = self.keys.depth_org_field(org_id)
        else:
            field = self.keys.tenant(org_id, env_id).depth_env_field
        with boundary("depth"):
            if org_id is not None:
                value = self.client.hget(self.keys.group_of(org_id).depth, field)
                return int(value) if value is not None else 0
            pipe = self.client.pipeline(transaction=False)
            for group in self.keys.groups:
                pipe.hget(group.depth, field)
            return sum(int(value) for value in pipe.execute() if value is not None)

    def oldest_created_at(self, org_id: str, env_id: str) -> datetime | None:
        """When the oldest QUEUED entry of the env was accepted, or None if it has none."""
        queue = self.keys.tenant(org_id, env_id).queue
        start = 0
        with boundary("oldest_created_at"):
            while True:
                ids = self.client.lrange(queue, start, start + _OLDEST_WINDOW - 1)
                if not ids:
                    return None
                pipe = self.client.pipeline(transaction=False)
                for message_id in ids:
                    entry = self.keys.group_of(org_id).entry(text(message_id))
                    pipe.hmget(entry, "status", "org", "env", "created_at_ms")
                for status, org, env, created_at_ms in pipe.execute():
                    # Skip references left behind by expired or moved entries, as pop does.
                    if status == b"QUEUED" and org == org_id.encode() and env == env_id.encode():
                        return to_datetime(created_at_ms)
                start += len(ids)

    def tripped(self) -> list[Tenant]:
        """Envs whose trip marker is live now, sorted.

        Two round trips: the registry (pruned of members whose deadline has passed), then the
        hold marker of each member left, since a member may outlive its marker by half a hold.
        """
        with boundary("tripped"):
            members = [
                member
                for group in self.keys.groups
                for member in run(self.client, self.scripts.tripped, 1, group.tripped)
            ]
            tenants = [Tenant(*parse_tenant_tag(member)) for member in members]
            if not tenants:
                return []
            pipe = self.client.pipeline(transaction=False)
            for tenant in tenants:
                pipe.exists(self.keys.tenant(*tenant).trip_hold)
            live = pipe.execute()
            return sorted(tenant for tenant, exists in zip(tenants, live, strict=True) if exists)

    # Internals ------------------------------------------------------------------------------
    def _failed_tenants(self, org_id: str | None, env_id: str | None) -> list[tuple[str, str]]:
        """The (org, env) pairs whose dead letters a listing or purge must visit."""
        if org_id is None:
            pipe = self.client.pipeline(transaction=False)
            for group in self.keys.groups:
                pipe.smembers(group.failed_orgs)
            orgs = sorted(text(org) for members in pipe.execute() for org in members)
        elif env_id is not None:
            return [(org_id, env_id)]
        else:
            orgs = [org_id]
        pipe = self.client.pipeline(transaction=False)
        for org in orgs:
            pipe.smembers(self.keys.failed_envs(org))
        return [
            (org, text(env)) for org, envs in zip(orgs, pipe.execute(), strict=True) for env in sorted(envs)
        ]
