"""What every side of the buffer shares: the client, the key space, the scripts, per-entry calls.

Operations on one message id (``ack``, ``requeue``, ``fail``, ``retry_failed``) touch keys that
depend on the entry's org and env. Since every key a script touches must be passed in KEYS, the
buffer first reads the entry's tenant (one round trip) unless the caller names it (as the drainer
can from the popped entry); the script checks the tenant again, atomically, and the buffer looks
it up afresh if it changed in between.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.commands.core import Script

from ..errors import BufferUnavailableError, MollifierConfigurationError
from ..settings import default_of
from .codec import text
from .keys import KeySpace, TenantKeys
from .scripts import Scripts

__all__ = ["DEFAULT_LEASE_MS", "STALE_OWNER", "WRONG_TENANT", "BufferCore"]

#: How long a popped entry may stay DRAINING before any drainer reclaims it: ``drain_lease_ms``'s
#: default.
DEFAULT_LEASE_MS: int = default_of("drain_lease_ms")
#: The script answer for "the entry belongs to another tenant than the caller believed".
WRONG_TENANT = -1
#: The script answer for "the owner token named no longer holds the entry's lease" (nothing done).
STALE_OWNER = -2
TENANT_LOOKUPS = 3
#: The most slot groups a buffer may have (``slot_groups``'s upper bound).
MAX_SLOT_GROUPS = 1_024


class BufferCore:
    """The client, keys and scripts of one buffer, and the calls every per-entry script shares.

    Parameters:
      client: A ``redis.Redis`` client with ``decode_responses=False`` (RESP2 or RESP3).
      key_prefix: The prefix of every key. Defaults to ``mollifier``.
      entry_ttl_s: Expiry of QUEUED entries in seconds. Defaults to None: no expiry, since in
        ``divert`` mode the buffer holds the only copy of a message. DRAINING entries never
        expire; FAILED entries expire too when it is set.
      lease_ms: How long a popped entry stays DRAINING before it may be reclaimed.
        Defaults to :data:`DEFAULT_LEASE_MS` (``drain_lease_ms``'s default, 60 seconds).
      slot_groups: The key layout (see :mod:`.keys`): 0 for one group under today's key names,
        N for N slot groups (Redis Cluster). Defaults to 0.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = default_of("key_prefix"),
        entry_ttl_s: int | None = None,
        lease_ms: int = DEFAULT_LEASE_MS,
        slot_groups: int = 0,
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
        if not 0 <= slot_groups <= MAX_SLOT_GROUPS:
            raise MollifierConfigurationError(
                f"slot_groups must be 0 to {MAX_SLOT_GROUPS}, got {slot_groups}"
            )
        self.slot_groups = slot_groups
        self.keys = KeySpace(key_prefix, groups=slot_groups)
        self.ttl_ms = entry_ttl_s * 1000 if entry_ttl_s else 0
        self.scripts = Scripts(client)

    def tenants_of(self, message_ids: Sequence[str]) -> list[tuple[str, str] | None]:
        """The (org, env) of each entry, None for a missing one (one pipelined round trip).

        With slot groups the entry may be in any group: every group's name is read.
        """
        groups = self.keys.groups
        pipe = self.client.pipeline(transaction=False)
        for message_id in message_ids:
            for group in groups:
                pipe.hmget(group.entry(message_id), "org", "env")
        replies = pipe.execute()
        found: list[tuple[str, str] | None] = []
        for i in range(len(message_ids)):
            tenant = None
            for org, env in replies[i * len(groups) : (i + 1) * len(groups)]:
                if org is not None and env is not None:
                    tenant = (text(org), text(env))
            found.append(tenant)
        return found

    def entry_op_call(
        self, message_id: str, org_id: str, env_id: str, extra: tuple[str | int, ...]
    ) -> tuple[tuple[str, ...], tuple[str | int, ...]]:
        """KEYS and ARGV of a per-entry script (the layout every such script shares)."""
        t: TenantKeys = self.keys.tenant(org_id, env_id)
        keys = t.space  # the tenant's group
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
                keys.drain_wake,
                *keys.index_keys,
            ),
            (message_id, org_id, env_id, *extra),
        )

    def entry_op(
        self,
        script: Script,
        message_id: str,
        org_id: str | None,
        env_id: str | None,
        extra: tuple[str | int, ...],
    ) -> int:
        """Run a per-entry script, looking the entry's tenant up unless the caller named it.

        Returns the script's answer: 1 done, 0 missing or not applicable, :data:`STALE_OWNER`
        when the owner token passed no longer holds the lease. Nothing is created for a missing
        entry: the lookup finds none and no script runs.
        """
        for _ in range(TENANT_LOOKUPS):
            if org_id is None or env_id is None:
                tenant = self.tenants_of([message_id])[0]
                if tenant is None:
                    return 0
                org_id, env_id = tenant
            keys, args = self.entry_op_call(message_id, org_id, env_id, extra)
            result = int(script(keys=keys, args=args))
            if result != WRONG_TENANT:
                return result
            org_id = env_id = None
        raise BufferUnavailableError(
            f"mollifier buffer: entry {message_id!r} kept changing tenant while it was being updated"
        )
