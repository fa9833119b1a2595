"""The Redis buffer that holds diverted messages until a drainer puts them back on the broker.

Every multi-step operation is one atomic Lua script from ``lua/``; Redis errors are wrapped in
:class:`BufferUnavailableError` here, at the boundary. The key layout is in :mod:`.keys`.

Operations on one message id (``ack``, ``requeue``, ``fail``, ``retry_failed``) touch keys that
depend on the entry's org and env. Since every key a script touches must be passed in KEYS, the
buffer first reads the entry's tenant (one round trip) unless the caller names it
(``org_id=``/``env_id=``, as the drainer can from the popped entry); the script checks the tenant
again, atomically, and the buffer looks it up afresh if it changed in between.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import redis
from redis.backoff import EqualJitterBackoff
from redis.commands.core import Script
from redis.retry import Retry

from .errors import BufferUnavailableError, MollifierConfigurationError
from .keys import DEPTH_TOTAL_FIELD, KeySpace, TenantKeys, parse_tenant_tag
from .models import BufferEntry, EntryStatus, Tenant, TripDecision
from .scripts import Scripts, run, run_pipelined

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_MS",
    "DEFAULT_LEASE_MS",
    "DEFAULT_SOCKET_TIMEOUT_MS",
    "MollifierBuffer",
]

#: How long a popped entry may stay DRAINING before any drainer reclaims it.
DEFAULT_LEASE_MS = 60_000
#: ``from_url``: how long one Redis command may wait for its reply. A ``send()`` must never hang
#: long because of the mollifier.
DEFAULT_SOCKET_TIMEOUT_MS = 500
#: ``from_url``: how long opening a connection may take.
DEFAULT_CONNECT_TIMEOUT_MS = 500
#: ``from_url``: retries of a command after a connection error (one, for a stale pooled socket).
DEFAULT_CONNECTION_RETRIES = 1

# The script answer for "the entry belongs to another tenant than the caller believed".
_WRONG_TENANT = -1
_TENANT_LOOKUPS = 3
# A pop peeks at a few more ids than it wants, so a drainer that loses a race on the head of the
# queue to another drainer, or meets references that expired entries left, can usually still
# fill its batch in the same call; else it peeks again, at most _POP_ATTEMPTS times in all.
_PEEK_SLACK = 16
_POP_ATTEMPTS = 3
_RECLAIM_BATCH = 500
_PURGE_BATCH = 500
_OLDEST_WINDOW = 50
# The header of each entry in a pop reply's frames (see lua/pop.lua).
_POP_HEADER = struct.Struct(">iiiiiq")
# Distinct (window, threshold, hold) settings whose encoded form is kept; emptied when it fills.
_TRIP_ARGS_CACHE_SIZE = 64
# What a buffer call can raise: Redis errors, and replies that are not what the scripts promise
# (they surface as these while being decoded).
_FAILURES = (redis.RedisError, ValueError, TypeError, KeyError, IndexError, AttributeError)


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8")


def _texts(values: Iterable[Any]) -> list[str]:
    return [_text(value) for value in values]


def _datetime(ms: bytes | int) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)


def _last_error(code: bytes | None, message: bytes | None) -> tuple[str, str] | None:
    if code is None:
        return None
    return _text(code), _text(message or b"")


def _unpack_popped(frames: bytes, org_id: str, env_id: str) -> Iterator[BufferEntry]:
    header = _POP_HEADER
    at = 0
    while at < len(frames):
        id_len, payload_len, code_len, message_len, attempts, created_at_ms = header.unpack_from(frames, at)
        at += header.size
        message_id = frames[at : (at := at + id_len)].decode("utf-8")
        payload = frames[at : (at := at + payload_len)]
        last_error = None
        if code_len >= 0:
            code = frames[at : (at := at + code_len)].decode("utf-8")
            last_error = (code, frames[at : (at := at + message_len)].decode("utf-8"))
        yield BufferEntry(
            message_id=message_id,
            org_id=org_id,
            env_id=env_id,
            payload=payload,
            status=EntryStatus.DRAINING,
            attempts=attempts,
            created_at=_datetime(created_at_ms),
            last_error=last_error,
        )


def _wrap(operation: str, exc: Exception) -> BufferUnavailableError:
    if isinstance(exc, redis.RedisError):
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = f"unexpected reply ({type(exc).__name__}: {exc})"
    return BufferUnavailableError(f"mollifier buffer: Redis {operation} failed: {reason}")


def _check_scope(org_id: str | None, env_id: str | None) -> None:
    if org_id is None and env_id is not None:
        raise ValueError(f"env_id={env_id!r} needs org_id too: env ids are scoped by their org")


@contextmanager
def _boundary(operation: str) -> Iterator[None]:
    """Turn Redis errors, and replies that cannot be decoded, into BufferUnavailableError."""
    try:
        yield
    except _FAILURES as exc:
        raise _wrap(operation, exc) from exc


class MollifierBuffer:
    """Per-env FIFO queues of buffered messages, with org/env indexes, leases and dead letters.

    Parameters:
      client: A ``redis.Redis`` client with ``decode_responses=False`` (RESP2 or RESP3).
      key_prefix: The prefix of every key. Defaults to ``mollifier``.
      entry_ttl_s: Expiry of QUEUED entries in seconds. Defaults to None: no expiry, since in
        ``divert`` mode the buffer holds the only copy of a message. DRAINING entries never
        expire; FAILED entries expire too when it is set.
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
        if not key_prefix:
            raise MollifierConfigurationError("key_prefix must not be empty")
        if entry_ttl_s is not None and entry_ttl_s <= 0:
            raise MollifierConfigurationError(f"entry_ttl_s must be positive or None, got {entry_ttl_s}")
        if lease_ms <= 0:
            raise MollifierConfigurationError(f"lease_ms must be positive, got {lease_ms}")
        self.client = client
        self.key_prefix = key_prefix
        self.entry_ttl_s = entry_ttl_s
        self.lease_ms = lease_ms
        self.keys = KeySpace(key_prefix)
        self._ttl_ms = entry_ttl_s * 1000 if entry_ttl_s else 0
        self._scripts = Scripts(client)
        # (window_ms, threshold, hold_ms) -> those ARGV and the entry TTL, encoded once.
        self._trip_args: dict[tuple[int, int, int], tuple[bytes, bytes, bytes, bytes]] = {}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> MollifierBuffer:
        """Build a buffer over a new client for ``url`` with bounded socket timeouts.

        ``key_prefix``, ``entry_ttl_s`` and ``lease_ms`` go to the buffer; any other keyword goes
        to ``redis.Redis.from_url`` and overrides the defaults: RESP3, socket and connect timeouts
        of :data:`DEFAULT_SOCKET_TIMEOUT_MS` and :data:`DEFAULT_CONNECT_TIMEOUT_MS`, and one quick
        retry after a connection error.
        """
        own = {name: kwargs.pop(name) for name in ("key_prefix", "entry_ttl_s", "lease_ms") if name in kwargs}
        if kwargs.get("decode_responses"):
            raise MollifierConfigurationError("the buffer needs decode_responses=False (payloads are bytes)")
        kwargs["decode_responses"] = False
        kwargs.setdefault("protocol", 3)
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT_MS / 1000)
        kwargs.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT_MS / 1000)
        kwargs.setdefault("retry", Retry(EqualJitterBackoff(cap=0.05, base=0.01), DEFAULT_CONNECTION_RETRIES))
        client = redis.Redis.from_url(url, **kwargs)
        return cls(client, **own)

    # Enqueue side ---------------------------------------------------------------------------
    def accept(self, message_id: str, *, org_id: str, env_id: str, payload: bytes) -> bool:
        """Store a QUEUED entry and append it to its env's queue. False if the id exists."""
        keys = self.keys
        t = keys.tenant(org_id, env_id)
        try:
            reply = run(
                self.client,
                self._scripts.accept,
                5,
                keys.entry(message_id),
                *t.accept_keys,
                message_id,
                *t.ids,
                payload,
                self._ttl_ms,
            )
            return bool(reply == 1)
        except _FAILURES as exc:
            raise _wrap("accept", exc) from exc

    def evaluate_trip(
        self, org_id: str, env_id: str, *, window_ms: int, threshold: int, hold_ms: int
    ) -> TripDecision:
        """Count one enqueue for the env and say whether it is tripped (one round trip)."""
        t = self.keys.tenant(org_id, env_id)
        try:
            window, limit, hold, _ = self._encoded_trip_args(window_ms, threshold, hold_ms)
            reply = run(
                self.client, self._scripts.evaluate_trip, 3, *t.trip_keys, window, limit, hold, *t.ids
            )
            return TripDecision(reply & 1 == 1, reply >> 1)
        except _FAILURES as exc:
            raise _wrap("evaluate_trip", exc) from exc

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
        keys = self.keys
        t = keys.tenant(org_id, env_id)
        try:
            reply = run(
                self.client,
                self._scripts.evaluate_trip_and_accept,
                8,
                *t.trip_keys,
                keys.entry(message_id),
                *t.accept_keys,
                *self._encoded_trip_args(window_ms, threshold, hold_ms),
                message_id,
                *t.ids,
                payload,
            )
            return TripDecision(reply & 2 == 2, reply >> 2), reply & 1 == 1
        except _FAILURES as exc:
            raise _wrap("evaluate_trip_and_accept", exc) from exc

    # Drain side -----------------------------------------------------------------------------
    def pop(self, org_id: str, env_id: str) -> BufferEntry | None:
        """The oldest QUEUED entry of the env, moved to DRAINING under a lease, or None."""
        entries = self.pop_many(org_id, env_id, 1)
        return entries[0] if entries else None

    def pop_many(self, org_id: str, env_id: str, limit: int) -> list[BufferEntry]:
        """Up to ``limit`` entries as :meth:`pop` would return them, in one round trip.

        Two round trips in fact: a peek at the head of the queue (LRANGE), then the script that
        pops, since the script must be given the key of every entry it touches. A drainer that
        loses the head to a concurrent pop peeks again, at most a few times.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        keys = self.keys
        t = keys.tenant(org_id, env_id)
        entries: list[BufferEntry] = []
        with _boundary("pop"):
            for _ in range(_POP_ATTEMPTS):
                wanted = limit - len(entries)
                ids = _texts(self.client.lrange(t.queue, 0, wanted + _PEEK_SLACK - 1))
                reply = run(
                    self.client,
                    self._scripts.pop,
                    5 + len(ids),
                    t.queue,
                    t.envs,
                    keys.orgs,
                    keys.leases,
                    keys.depth,
                    *map(keys.entry, ids),
                    org_id,
                    env_id,
                    wanted,
                    self.lease_ms,
                    *ids,
                )
                entries += _unpack_popped(reply[1], org_id, env_id)
                if reply[0] == 0 or len(entries) >= limit:
                    break
        return entries

    def ack(self, message_id: str, *, org_id: str | None = None, env_id: str | None = None) -> None:
        """Remove the entry (any status) and everything that refers to it.

        ``org_id`` and ``env_id``, when the caller knows them (from a popped entry), save the
        round trip that looks them up. A wrong guess costs that round trip, nothing else.
        """
        with _boundary("ack"):
            self._entry_op(self._scripts.ack, message_id, org_id, env_id, ())

    def ack_many(self, message_ids: Sequence[str]) -> int:
        """:meth:`ack` several entries in one round trip; returns how many existed.

        Two round trips in fact, each pipelined: the tenants of the entries, then the acks.
        """
        if not message_ids:
            return 0
        with _boundary("ack_many"):
            tenants = self._tenants_of(message_ids)
            present = [
                (mid, tenant) for mid, tenant in zip(message_ids, tenants, strict=True) if tenant is not None
            ]
            if not present:
                return 0
            answers = run_pipelined(
                self.client,
                self._scripts.ack,
                [self._entry_op_call(mid, org, env, ()) for mid, (org, env) in present],
            )
            removed = 0
            for (message_id, _), answer in zip(present, answers, strict=True):
                result = int(answer)
                if result == _WRONG_TENANT:
                    result = self._entry_op(self._scripts.ack, message_id, None, None, ())
                removed += result == 1
            return removed

    def ack_entries(self, entries: Sequence[BufferEntry]) -> int:
        """:meth:`ack` entries this process popped, in one round trip; returns how many existed.

        The entries' tenants come from the entries, so nothing is looked up: one script removes
        every entry still DRAINING under its tenant. Any other (its lease expired and it was
        reclaimed, say) is acked on its own afterwards, as :meth:`ack` would.
        """
        if not entries:
            return 0
        keys = self.keys
        entry_keys: list[str] = []
        args: list[str] = []
        for entry in entries:
            entry_keys.append(keys.entry(entry.message_id))
            args += (entry.message_id, entry.org_id, entry.env_id)
        with _boundary("ack_entries"):
            reply = run(
                self.client,
                self._scripts.ack_draining,
                len(entry_keys) + 2,
                keys.leases,
                keys.depth,
                *entry_keys,
                *args,
            )
            removed = int(reply[0])
            for position in reply[1:]:
                entry = entries[int(position) - 1]
                removed += (
                    self._entry_op(self._scripts.ack, entry.message_id, entry.org_id, entry.env_id, ()) == 1
                )
            return removed

    def release(self, entries: Sequence[BufferEntry]) -> int:
        """Give back popped entries whose handler never ran; returns how many went back.

        For a drainer that stops with entries popped but not yet handled: each still DRAINING
        is QUEUED again at the head of its queue, in the same order, attempts unchanged.
        """
        if not entries:
            return 0
        calls = [
            self._entry_op_call(e.message_id, e.org_id, e.env_id, (self._ttl_ms,)) for e in reversed(entries)
        ]
        with _boundary("release"):
            answers = run_pipelined(self.client, self._scripts.release, calls)
        return sum(int(answer) == 1 for answer in answers)

    def requeue(self, message_id: str, *, org_id: str | None = None, env_id: str | None = None) -> bool:
        """attempts + 1, back to QUEUED at the tail of its env's queue. False if missing.

        ``org_id``/``env_id``: as for :meth:`ack`.
        """
        with _boundary("requeue"):
            return self._entry_op(self._scripts.requeue, message_id, org_id, env_id, (self._ttl_ms,)) == 1

    def fail(
        self,
        message_id: str,
        *,
        code: str,
        message: str,
        org_id: str | None = None,
        env_id: str | None = None,
    ) -> bool:
        """Mark FAILED with the last error and keep it in its env's dead-letter set.

        False (and nothing created) if the entry is missing. ``org_id``/``env_id``: as for
        :meth:`ack`.
        """
        with _boundary("fail"):
            args = (code, message, self._ttl_ms)
            return self._entry_op(self._scripts.fail, message_id, org_id, env_id, args) == 1

    def reclaim_expired(self) -> list[str]:
        """Return DRAINING entries whose lease has expired to their queue; their ids."""
        reclaimed: list[str] = []
        with _boundary("reclaim_expired"):
            while True:
                ids = _texts(self._scripts.expired_leases(keys=(self.keys.leases,), args=(_RECLAIM_BATCH,)))
                if not ids:
                    break
                calls = []
                for message_id, tenant in zip(ids, self._tenants_of(ids), strict=True):
                    # A lease whose entry is gone is dropped by the script; any tenant will do.
                    org_id, env_id = tenant or ("", "")
                    calls.append(self._entry_op_call(message_id, org_id, env_id, (self._ttl_ms,)))
                answers = run_pipelined(self.client, self._scripts.reclaim, calls)
                for message_id, answer in zip(ids, answers, strict=True):
                    result = int(answer)
                    if result == _WRONG_TENANT:
                        result = self._entry_op(
                            self._scripts.reclaim, message_id, None, None, (self._ttl_ms,)
                        )
                    if result == 1:
                        reclaimed.append(message_id)
                if len(ids) < _RECLAIM_BATCH:
                    break
        return reclaimed

    # Dead letters ---------------------------------------------------------------------------
    def retry_failed(self, message_id: str) -> bool:
        """Put a FAILED entry back in its queue with attempts reset. False if not FAILED."""
        with _boundary("retry_failed"):
            return self._entry_op(self._scripts.retry_failed, message_id, None, None, (self._ttl_ms,)) == 1

    def purge_failed(self, org_id: str | None = None, env_id: str | None = None) -> int:
        """Delete FAILED entries (all, an org's, or an env's); returns how many."""
        _check_scope(org_id, env_id)
        keys = self.keys
        deleted = 0
        with _boundary("purge_failed"):
            for org, env in self._failed_tenants(org_id, env_id):
                t = keys.tenant(org, env)
                while True:
                    ids = _texts(self.client.zrange(t.failed, 0, _PURGE_BATCH - 1))
                    deleted += self._scripts.purge_failed(
                        keys=[t.failed, t.failed_envs, keys.failed_orgs, *map(keys.entry, ids)],
                        args=[org, env, *ids],
                    )
                    if len(ids) < _PURGE_BATCH:
                        break
        return deleted

    # Inspection -----------------------------------------------------------------------------
    def get(self, message_id: str) -> BufferEntry | None:
        """The entry, in any status, or None."""
        with _boundary("get"):
            fields = self.client.hgetall(self.keys.entry(message_id))
            return self._entry_from_hash(message_id, fields) if fields else None

    def orgs(self) -> list[str]:
        """Orgs with QUEUED work, sorted."""
        with _boundary("orgs"):
            return _texts(self.client.zrange(self.keys.orgs, 0, -1))

    def envs_of(self, org_ids: Sequence[str]) -> list[list[str] | None]:
        """:meth:`envs` of each org, in one round trip; None for an org whose envs could not be
        read (its key holds something else), so one bad key does not hide the other orgs.
        """
        with _boundary("envs_of"):
            pipe = self.client.pipeline(transaction=False)
            for org_id in org_ids:
                pipe.smembers(self.keys.envs(org_id))
            return [
                None if isinstance(reply, Exception) else sorted(_texts(reply))
                for reply in pipe.execute(raise_on_error=False)
            ]

    def org_window(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` orgs with QUEUED work, in order from the first one after ``after``
        (from the first of all when None), wrapping around to the first: one round trip whose
        cost depends on ``limit``, not on how many orgs have work.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if after is None:
            with _boundary("org_window"):
                return _texts(self.client.zrangebylex(self.keys.orgs, "-", "+", 0, limit))
        bound = after.encode("utf-8")
        with _boundary("org_window"):
            pipe = self.client.pipeline(transaction=False)
            pipe.zrangebylex(self.keys.orgs, b"(" + bound, "+", 0, limit)
            pipe.zrangebylex(self.keys.orgs, "-", b"[" + bound, 0, limit)
            later, wrapped = pipe.execute()
            return _texts([*later, *wrapped][:limit])

    def envs(self, org_id: str) -> list[str]:
        """Envs of ``org_id`` with QUEUED work, sorted."""
        with _boundary("envs"):
            return sorted(_text(env) for env in self.client.smembers(self.keys.envs(org_id)))

    def failed(self, org_id: str | None = None, env_id: str | None = None) -> list[BufferEntry]:
        """FAILED entries, oldest failure first."""
        _check_scope(org_id, env_id)
        found: list[tuple[float, BufferEntry]] = []
        with _boundary("failed"):
            members: list[tuple[str, str, str, float]] = []
            tenants = self._failed_tenants(org_id, env_id)
            pipe = self.client.pipeline(transaction=False)
            for org, env in tenants:
                pipe.zrange(self.keys.tenant(org, env).failed, 0, -1, withscores=True)
            for (org, env), pairs in zip(tenants, pipe.execute(), strict=True):
                members.extend((_text(member), org, env, float(score)) for member, score in pairs)
            pipe = self.client.pipeline(transaction=False)
            for message_id, *_ in members:
                pipe.hgetall(self.keys.entry(message_id))
            for (message_id, org, env, failed_at), fields in zip(members, pipe.execute(), strict=True):
                if not fields:
                    continue  # expired (entry_ttl_s) since it failed
                entry = self._entry_from_hash(message_id, fields)
                if entry.status is EntryStatus.FAILED and (entry.org_id, entry.env_id) == (org, env):
                    found.append((failed_at, entry))
        found.sort(key=lambda item: (item[0], item[1].message_id))
        return [entry for _, entry in found]

    def depth(self, org_id: str | None = None, env_id: str | None = None) -> int:
        """QUEUED + DRAINING entries in total, of an org, or of an env (no keyspace scan)."""
        _check_scope(org_id, env_id)
        if org_id is None:
            field = DEPTH_TOTAL_FIELD
        elif env_id is None:
            field = self.keys.depth_org_field(org_id)
        else:
            field = self.keys.tenant(org_id, env_id).depth_env_field
        with _boundary("depth"):
            value = self.client.hget(self.keys.depth, field)
            return int(value) if value is not None else 0

    def oldest_created_at(self, org_id: str, env_id: str) -> datetime | None:
        """When the oldest QUEUED entry of the env was accepted, or None if it has none."""
        queue = self.keys.tenant(org_id, env_id).queue
        start = 0
        with _boundary("oldest_created_at"):
            while True:
                ids = self.client.lrange(queue, start, start + _OLDEST_WINDOW - 1)
                if not ids:
                    return None
                pipe = self.client.pipeline(transaction=False)
                for message_id in ids:
                    pipe.hmget(self.keys.entry(_text(message_id)), "status", "org", "env", "created_at_ms")
                for status, org, env, created_at_ms in pipe.execute():
                    # Skip references left behind by expired or moved entries, as pop does.
                    if status == b"QUEUED" and org == org_id.encode() and env == env_id.encode():
                        return _datetime(created_at_ms)
                start += len(ids)

    def tripped(self) -> list[Tenant]:
        """Envs whose trip marker is live now, sorted.

        Two round trips: the registry (pruned of members whose deadline has passed), then the
        hold marker of each member left, since a member may outlive its marker by half a hold.
        """
        with _boundary("tripped"):
            members = run(self.client, self._scripts.tripped, 1, self.keys.tripped)
            tenants = [Tenant(*parse_tenant_tag(member)) for member in members]
            if not tenants:
                return []
            pipe = self.client.pipeline(transaction=False)
            for tenant in tenants:
                pipe.exists(self.keys.tenant(*tenant).trip_hold)
            live = pipe.execute()
            return sorted(tenant for tenant, exists in zip(tenants, live, strict=True) if exists)

    # Internals ------------------------------------------------------------------------------
    def _encoded_trip_args(
        self, window_ms: int, threshold: int, hold_ms: int
    ) -> tuple[bytes, bytes, bytes, bytes]:
        """The window, threshold and hold ARGV and the entry TTL, as sent (cached: they rarely vary)."""
        setting = (window_ms, threshold, hold_ms)
        encoded = self._trip_args.get(setting)
        if encoded is None:
            if len(self._trip_args) >= _TRIP_ARGS_CACHE_SIZE:
                self._trip_args.clear()
            encoded = self._trip_args[setting] = (
                b"%d" % window_ms,
                b"%d" % threshold,
                b"%d" % hold_ms,
                b"%d" % self._ttl_ms,
            )
        return encoded

    def _entry_from_hash(self, message_id: str, fields: dict[Any, Any]) -> BufferEntry:
        return BufferEntry(
            message_id=message_id,
            org_id=_text(fields[b"org"]),
            env_id=_text(fields[b"env"]),
            payload=fields[b"payload"],
            status=EntryStatus(_text(fields[b"status"])),
            attempts=int(fields[b"attempts"]),
            created_at=_datetime(fields[b"created_at_ms"]),
            last_error=_last_error(fields.get(b"error_code"), fields.get(b"error_message")),
        )

    def _tenants_of(self, message_ids: Sequence[str]) -> list[tuple[str, str] | None]:
        """The (org, env) of each entry, None for a missing one (one pipelined round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.hmget(self.keys.entry(message_id), "org", "env")
        return [
            (_text(org), _text(env)) if org is not None and env is not None else None
            for org, env in pipe.execute()
        ]

    def _entry_op_call(
        self, message_id: str, org_id: str, env_id: str, extra: tuple[str | int, ...]
    ) -> tuple[tuple[str, ...], tuple[str | int, ...]]:
        """KEYS and ARGV of a per-entry script (the layout every such script shares)."""
        keys = self.keys
        t: TenantKeys = keys.tenant(org_id, env_id)
        return (
            (
                keys.entry(message_id),
                t.queue,
                t.envs,
                keys.orgs,
                keys.leases,
                t.failed,
                t.failed_envs,
                keys.failed_orgs,
                keys.depth,
            ),
            (message_id, org_id, env_id, *extra),
        )

    def _entry_op(
        self,
        script: Script,
        message_id: str,
        org_id: str | None,
        env_id: str | None,
        extra: tuple[str | int, ...],
    ) -> int:
        """Run a per-entry script, looking the entry's tenant up unless the caller named it.

        Returns the script's answer: 1 done, 0 missing or not applicable. Nothing is created for
        a missing entry: the lookup finds none and no script runs.
        """
        for _ in range(_TENANT_LOOKUPS):
            if org_id is None or env_id is None:
                tenant = self._tenants_of([message_id])[0]
                if tenant is None:
                    return 0
                org_id, env_id = tenant
            keys, args = self._entry_op_call(message_id, org_id, env_id, extra)
            result = int(script(keys=keys, args=args))
            if result != _WRONG_TENANT:
                return result
            org_id = env_id = None
        raise BufferUnavailableError(
            f"mollifier buffer: entry {message_id!r} kept changing tenant while it was being updated"
        )

    def _failed_tenants(self, org_id: str | None, env_id: str | None) -> list[tuple[str, str]]:
        """The (org, env) pairs whose dead letters a listing or purge must visit."""
        if org_id is None:
            orgs = sorted(_text(org) for org in self.client.smembers(self.keys.failed_orgs))
        elif env_id is not None:
            return [(org_id, env_id)]
        else:
            orgs = [org_id]
        pipe = self.client.pipeline(transaction=False)
        for org in orgs:
            pipe.smembers(self.keys.failed_envs(org))
        return [
            (org, _text(env)) for org, envs in zip(orgs, pipe.execute(), strict=True) for env in sorted(envs)
        ]
