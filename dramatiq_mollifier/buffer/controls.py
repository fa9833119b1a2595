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
``cancel_each(message_ids) -> CancelOutcome``               the same, saying which were too late
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
before finds it gone right before its broker write and drops it (counted as ``cancelled`` in
``mollifier.drained``). Once a drainer has committed an entry to its broker write (see
:mod:`dramatiq_mollifier.drain.cancel_check`), a cancel leaves it alone and reports it too late:
every cancel that reports success is a message that never reaches the broker.
Pause, caps and weights are runtime rules in three small hashes (see :mod:`.rules`) that every
process re-reads in the background every 500 ms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import redis

from ..errors import InvalidArgumentError, MollifierConfigurationError
from ..models import MessageLookup, PausedTenant, TenantCap, TenantPage
from ..settings import MollifierSettings
from .clients import slot_groups_for
from .codec import boundary, last_error, text, texts
from .core import WRONG_TENANT, BufferCore
from .listing import TENANT_SORTS, ListingScripts, tenant_page
from .rules import MAX_WEIGHT, parse_field, tenant_field
from .scripts import run_pipelined, script_source

__all__ = ["TENANT_SORTS", "CancelOutcome", "TenantControls"]

# Queue ids cancelled per pipelined round trip by cancel_tenant.
_CANCEL_BATCH = 500
# Rounds of cancel_tenant at most: each after one that cancelled something (a drainer at work).
_CANCEL_ROUNDS = 5
_STATES = {b"QUEUED": "queued", b"DRAINING": "draining", b"FAILED": "dead_lettered"}
# cancel.lua's answers: cancelled, only a vanished entry's queue reference removed, too late.
_CANCELLED, _REFERENCE, _TOO_LATE = 1, 2, 3
_LOOKUP_FIELDS = ("status", "org", "env", "attempts", "created_at_ms", "error_code", "error_message", "mode")


class CancelOutcome(NamedTuple):
    """What :meth:`TenantControls.cancel_each` did, by id, in the order given."""

    #: Removed: these never reach the broker.
    cancelled: list[str]
    #: A drainer had already committed them to its broker write: they will be delivered (should
    #: that write fail, the entry goes back to its queue and can be cancelled again).
    too_late: list[str]
    #: Not buffered: dead-lettered, already drained or cancelled, or never buffered.
    not_buffered: list[str]


def _check_tenant(org_id: str, env_id: str | None) -> None:
    if not isinstance(org_id, str) or not org_id:
        raise InvalidArgumentError(f"expected a non-empty org id, got {org_id!r}")
    if env_id is not None and (not isinstance(env_id, str) or not env_id):
        raise InvalidArgumentError(f"expected a non-empty env id or None, got {env_id!r}")


class TenantControls:
    """Look up, cancel, pause, cap and weigh buffered work.

    Parameters:
      client: A ``redis.Redis`` client with ``decode_responses=False``.
      key_prefix: The prefix of every key. Defaults to ``mollifier``.
      settings: The settings the fleet runs with, for the listing's ``enrolled`` and ``cap``
        columns (static enrolment, settings caps). Defaults to None: ``enrolled`` is None and
        only runtime caps show.

    Redis errors are raised as :class:`~dramatiq_mollifier.errors.BufferUnavailableError`.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "mollifier",
        settings: MollifierSettings | None = None,
        slot_groups: int | None = None,
    ) -> None:
        if not key_prefix:
            raise MollifierConfigurationError("key_prefix must not be empty")
        if slot_groups is None:
            slot_groups = slot_groups_for(
                settings.buffer_options["slot_groups"] if settings else None, client
            )
        self._core = BufferCore(client, key_prefix=key_prefix, slot_groups=slot_groups)
        self.client = client
        self.key_prefix = key_prefix
        self.keys = self._core.keys
        self.settings = settings
        self._cancel_script = client.register_script(script_source("cancel"))
        self._listing = ListingScripts(client)

    # One message ----------------------------------------------------------------------------
    def lookup(self, message_id: str) -> MessageLookup:
        """Where ``message_id`` is: queued (with its 0-based position in its env's queue),
        draining, dead-lettered (with its error), or absent."""
        with boundary("lookup"):
            pipe = self.client.pipeline(transaction=False)
            for group in self.keys.groups:  # with slot groups, the entry may be in any group
                pipe.hmget(group.entry(message_id), *_LOOKUP_FIELDS)
            found_fields = pipe.execute()
            seconds, micros = self.client.time()  # a cluster pipeline refuses TIME
            fields = next((f for f in found_fields if f[0] is not None), found_fields[0])
            status, org, env, attempts, created_at_ms, code, error_message, mode = fields
            state = _STATES.get(status) if status is not None else None
            if state is None or org is None or env is None:
                return MessageLookup(message_id, "absent")
            org_id, env_id = text(org), text(env)
            position = None
            if state == "queued":
                found: Any = self.client.lpos(self.keys.tenant(org_id, env_id).queue, message_id)
                position = int(found) if found is not None else None
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            return MessageLookup(
                message_id,
                state,
                org_id=org_id,
                env_id=env_id,
                attempts=int(attempts or 0),
                age_ms=max(0, now_ms - int(created_at_ms)) if created_at_ms is not None else None,
                position=position,
                error=last_error(code, error_message) if state == "dead_lettered" else None,
                mode=text(mode) if mode is not None else None,
            )

    def cancel(self, message_ids: Iterable[str]) -> int:
        """Remove buffered (QUEUED or DRAINING) messages; returns how many were removed.

        A DRAINING one never reaches the broker: its drainer finds it gone right before the
        broker write. One its drainer already committed to that write is too late (left alone,
        not counted): :meth:`cancel_each` says which. Dead letters and unknown ids are left alone
        (``failed purge`` deletes the former).
        """
        return len(self.cancel_each(message_ids).cancelled)

    def cancel_each(self, message_ids: Iterable[str]) -> CancelOutcome:
        """:meth:`cancel`, saying which ids were cancelled, too late, or not buffered."""
        ids = list(dict.fromkeys(message_ids))
        if not ids:
            return CancelOutcome([], [], [])
        with boundary("cancel"):
            tenants = self._core.tenants_of(ids)
            present = [(mid, t) for mid, t in zip(ids, tenants, strict=True) if t is not None]
            answers = self._cancel_known([(mid, org, env) for mid, (org, env) in present])
        cancelled = [mid for mid in ids if answers.get(mid) == _CANCELLED]
        too_late = [mid for mid in ids if answers.get(mid) == _TOO_LATE]
        rest = [mid for mid in ids if answers.get(mid) not in (_CANCELLED, _TOO_LATE)]
        return CancelOutcome(cancelled, too_late, rest)

    def cancel_tenant(self, org_id: str, env_id: str | None = None) -> int:
        """Cancel every buffered message of an env, or of every env of an org; how many.

        Entries a drainer already committed to its broker write are too late: left alone, not
        counted. Messages sent meanwhile are buffered as usual: pause the tenant first to stop them.
        A drainer at work meanwhile shifts the queue under the pages read (it takes the head) and
        may put an in-flight entry back after the leases were read: each round that cancelled
        anything is followed by another, up to :data:`_CANCEL_ROUNDS`.
        """
        _check_tenant(org_id, env_id)
        cancelled = 0
        with boundary("cancel_tenant"):
            envs = (
                [env_id]
                if env_id is not None
                else sorted(texts(self.client.smembers(self.keys.envs(org_id))))
            )
            for _ in range(_CANCEL_ROUNDS):
                found = sum(self._cancel_queue(org_id, env) for env in envs)
                found += self._cancel_draining(org_id, env_id)
                cancelled += found
                if not found:
                    break
        return cancelled

    def _cancel_known(self, targets: Sequence[tuple[str, str, str]]) -> dict[str, int]:
        """Cancel (id, org, env) entries in one pipelined round trip; cancel.lua's answer by id."""
        if not targets:
            return {}
        calls = [self._core.entry_op_call(mid, org, env, ()) for mid, org, env in targets]
        answers = run_pipelined(self.client, self._cancel_script, calls)
        found: dict[str, int] = {}
        for (message_id, _, _), answer in zip(targets, answers, strict=True):
            result = int(answer)
            if result == WRONG_TENANT:
                result = self._core.entry_op(self._cancel_script, message_id, None, None, ())
            found[message_id] = result
        return found

    def _cancel_queue(self, org_id: str, env_id: str) -> int:
        queue = self.keys.tenant(org_id, env_id).queue
        cancelled = kept = 0
        while True:
            ids = texts(self.client.lrange(queue, kept, kept + _CANCEL_BATCH - 1))
            if not ids:
                return cancelled
            calls = [self._core.entry_op_call(mid, org_id, env_id, ()) for mid in ids]
            answers = [int(a) for a in run_pipelined(self.client, self._cancel_script, calls)]
            cancelled += answers.count(_CANCELLED)
            # What stays in the queue (another tenant's id, a dead letter's stale reference) is
            # stepped over; everything else left it (popped and committed since: too late).
            kept += sum(answer not in (_CANCELLED, _REFERENCE, _TOO_LATE) for answer in answers)

    def _cancel_draining(self, org_id: str, env_id: str | None) -> int:
        """Cancel the tenant's DRAINING entries: the leases are few (in flight only)."""
        group = self.keys.group_of(org_id)
        ids = texts(self.client.zrange(group.leases, 0, -1))
        if not ids:
            return 0
        tags: Any = self.client.hmget(group.depth, [f"lease:{mid}" for mid in ids])
        targets = []
        for message_id, tag in zip(ids, tags, strict=True):
            if tag is None:
                continue
            field = parse_field(b"env:" + tag)
            if field is None:
                continue
            org, env = field
            if org == org_id and env is not None and (env_id is None or env == env_id):
                targets.append((message_id, org, env))
        return list(self._cancel_known(targets).values()).count(_CANCELLED)

    # Pause ----------------------------------------------------------------------------------
    def pause(self, org_id: str, env_id: str | None = None) -> bool:
        """Hold an org (every env) or one env in the buffer: its new sends are buffered whatever
        their rate, and drainers skip it. False if it was already paused."""
        _check_tenant(org_id, env_id)
        with boundary("pause"):
            seconds, micros = self.client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            return bool(self.client.hsetnx(self.keys.paused, tenant_field(org_id, env_id), now_ms))

    def resume(self, org_id: str, env_id: str | None = None) -> bool:
        """Undo :meth:`pause`; False if it was not paused (an env of a paused org stays held)."""
        _check_tenant(org_id, env_id)
        with boundary("resume"):
            return bool(self.client.hdel(self.keys.paused, tenant_field(org_id, env_id)))

    def paused(self) -> list[PausedTenant]:
        """Every pause in force, sorted by org then env (org-wide ones first)."""
        with boundary("paused"):
            raw: Any = self.client.hgetall(self.keys.paused)
        found = []
        for name, value in raw.items():
            tenant = parse_field(name)
            if tenant is not None:
                found.append(PausedTenant(tenant[0], tenant[1], int(value)))
        return sorted(found, key=lambda p: (p.org_id, p.env_id or "", p.env_id is not None))

    # Caps -----------------------------------------------------------------------------------
    def set_cap(self, org_id: str, env_id: str | None = None, *, limit: int | None) -> None:
        """Override the cap on buffered messages of an org (``env_id`` None) or an env;
        ``limit=None`` removes the override (the settings' cap applies again). 0 buffers nothing:
        every diverted send overflows."""
        _check_tenant(org_id, env_id)
        field = tenant_field(org_id, env_id)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= 1_000_000_000
        ):
            raise InvalidArgumentError(f"limit must be an int from 0 to 1,000,000,000 or None, got {limit!r}")
        with boundary("set_cap"):
            if limit is None:
                self.client.hdel(self.keys.caps, field)
            else:
                self.client.hset(self.keys.caps, field, limit)

    def caps(self) -> list[TenantCap]:
        """Every runtime cap override, sorted by org then env (org-wide ones first)."""
        with boundary("caps"):
            raw: Any = self.client.hgetall(self.keys.caps)
        found = []
        for name, value in raw.items():
            tenant = parse_field(name)
            if tenant is not None:
                found.append(TenantCap(tenant[0], tenant[1], int(value)))
        return sorted(found, key=lambda c: (c.org_id, c.env_id or "", c.env_id is not None))

    # Weights --------------------------------------------------------------------------------
    def set_weight(self, org_id: str, weight: int | None) -> None:
        """An org's share of the drain, relative to the default 1 (from 1 to 100); None removes
        the override."""
        _check_tenant(org_id, None)
        if weight is not None and (
            isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT
        ):
            raise InvalidArgumentError(
                f"weight must be an int from 1 to {MAX_WEIGHT} or None, got {weight!r}"
            )
        with boundary("set_weight"):
            if weight is None:
                self.client.hdel(self.keys.weights, org_id)
            else:
                self.client.hset(self.keys.weights, org_id, weight)

    def weights(self) -> dict[str, int]:
        """Every weight override, org id to weight."""
        with boundary("weights"):
            raw = self.client.hgetall(self.keys.weights)
        return {text(org): int(weight) for org, weight in sorted(raw.items())}

    # Listing --------------------------------------------------------------------------------
    def tenants(
        self, offset: int = 0, limit: int = 100, filter: str | None = None, sort: str = "org"
    ) -> TenantPage:
        """One page of the envs with buffered work (and envs with a pause or cap of their own).

        ``filter`` keeps the envs whose org id starts with it, or, written ``org/env``, the envs
        of that org whose env id starts with ``env``; ``sort`` is one of :data:`TENANT_SORTS`.
        A range read of the listing's indexes (:mod:`.tenant_index`), then the page's rows
        (depth counters, queue heads, rules, flags): the same few round trips with 100 or 100,000
        envs. Sorted by depth or age, a filtered page reads every env the filter matches.
        """
        if offset < 0 or limit < 1:
            raise InvalidArgumentError(f"offset must be >= 0 and limit >= 1, got {offset} and {limit}")
        if sort not in TENANT_SORTS:
            raise InvalidArgumentError(f"sort must be one of {TENANT_SORTS}, got {sort!r}")
        with boundary("tenants"):
            return tenant_page(
                self._listing, self.keys, self.settings, offset=offset, limit=limit, filter=filter, sort=sort
            )
