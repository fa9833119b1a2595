"""Every Redis key this package writes, named in one place.

Tenant ids and message ids are data, not syntax: each is percent-encoded with
``urllib.parse.quote(value, safe="")`` before it becomes part of a key. The encoding is injective
and leaves only ``A-Z a-z 0-9 _ . - ~ %`` in an encoded id, so an id containing ``:``, ``{``,
``}``, spaces, newlines, ``%`` or thousands of characters can neither collide with another id nor
reach outside the prefix. Below, ``{org}``, ``{env}`` and ``{id}`` stand for encoded ids and
``{p}`` for ``key_prefix`` (default ``mollifier``).

==============================  ===========  ==========================================================
Key                             Type         Holds
==============================  ===========  ==========================================================
``{p}:entry:{id}``              hash         one entry: ``org``, ``env``, ``payload``, ``status``,
                                             ``attempts``, ``created_at_ms``, ``error_code``,
                                             ``error_message``, ``mode``, ``owner`` (the
                                             token of the pop that leased it),
                                             ``leases_expired`` (org and env raw, not encoded)
``{p}:queue:{org}:{env}``       list         FIFO of message ids of the env (head = oldest)
``{p}:envs:{org}``              set          raw env ids of the org with queued work
``{p}:orgs``                    sorted set   raw org ids with queued work (scores 0: by id)
``{p}:leases``                  sorted set   DRAINING message ids, score = lease deadline (ms)
``{p}:depth``                   hash         QUEUED + DRAINING counts: fields ``total``,
                                             ``org:<org>``, ``env:<tag>`` (raw ids, see below);
                                             ``lease:<id>`` = ``<tag>`` of each DRAINING entry
``{p}:failed:{org}:{env}``      sorted set   FAILED message ids of the env, score = failed at (ms)
``{p}:failed-envs:{org}``       set          raw env ids of the org with FAILED entries
``{p}:failed-orgs``             set          raw org ids with FAILED entries
``{p}:trip:count:{org}:{env}``  string       the trip window's counter (expires with the window)
``{p}:trip:hold:{org}:{env}``   string       the "tripped" marker (expires after the hold);
                                             holds the env's score in ``{p}:tripped``
``{p}:tripped``                 sorted set   ``<tag>`` of tripped envs, score = a deadline no
                                             earlier than the hold marker's expiry (ms)
``{p}:drain:wake``              list         wake-up tokens for idle drainers (at most 8): pushed
                                             when the first org gets queued work
``{p}:paused``                  hash         paused tenants: ``org:<org>`` or ``env:<tag>`` =
                                             paused at (ms)
``{p}:caps``                    hash         runtime caps: ``org:<org>`` or ``env:<tag>`` = limit
``{p}:weights``                 hash         drain weights: ``<org>`` (raw) = weight
``{p}:gauges:lease``            string       the process that reports the fleet's gauges (token)
``{p}:trip:global:count``       string       the fleet-wide ceiling's window counter (all envs)
``{p}:trip:global:hold``        string       the fleet-wide ceiling's "tripped" marker
``{p}:index:tenants``           sorted set   ``<member>`` of every env with QUEUED or DRAINING
                                             entries, scores 0 (ordered by org, then env)
``{p}:index:depth``             sorted set   the same members, score = minus the env's depth
                                             (deepest first, ties by org and env)
``{p}:index:oldest``            sorted set   the same members, score = ``created_at_ms`` of the
                                             env's queue head; 0 when not known (to be
                                             repaired), :data:`NO_HEAD` when nothing is queued
==============================  ===========  ==========================================================

Hash fields and sorted-set members are not keys, so they hold raw ids, and the scripts build
them themselves (no ARGV for them): ``<tag>`` is ``<byte length of org>:<org>:<env>``, injective
whatever the ids contain since the length says where the org ends; ``org:<org>`` is injective
by itself. The four kinds of depth field cannot collide (``total``, ``org:``, ``env:``,
``lease:``). ``lease:<id>`` records the tenant a DRAINING entry is counted under, so that
reclaim can give the counts back when the entry's hash vanishes (evicted, deleted by hand).

The three ``index:`` sets are the tenant listing's indexes (``listing.py``, ``tenant_index.py``):
every script that changes an env's depth or its queue's head updates them in the same call. Their
``<member>`` is :func:`tenant_member`: the org id with each NUL byte doubled as ``\\0\\1``, two
NUL bytes, then the env id, so byte order is (org, env) order and an org-id prefix is a
``ZRANGEBYLEX`` range. The depth hash's ``indexed`` field counts what those scripts counted into
``total``: a buffer written by code older than the indexes shows ``indexed != total`` and the
listing rebuilds the indexes.

Times are Redis server time (``TIME``), so every process of a fleet agrees on them. Entries carry
no expiry unless ``entry_ttl_s`` is set.

**Slot groups** (``slot_groups`` = N > 0, the layout for Redis Cluster): the table above is
repeated once per group (the listing's three ``index:`` sets and the depth hash's ``indexed``
count included: each group indexes its own orgs' envs) under the prefix ``{p}:{<tag>}`` (a hash
tag, so every key of a group sits in one cluster slot and every script touches one slot), and
each org lives in exactly one group, ``jump_hash(blake2b-64(org), N)`` (a jump consistent hash:
changing N moves few orgs). The tags are chosen so group ``g``'s slot lies in the ``g``-th of N
equal slot ranges, so the groups spread evenly over the primaries. An entry's hash is in its
org's group. The fleet-wide keys (``paused``, ``caps``, ``weights``, ``gauges:lease``,
``trip:global:*`` and the drain budget's ``drain:*``) move under ``{p}:{fleet}``;
``{p}:org-flags`` keeps its name. The layout in use is recorded in ``{p}:layout``
(``slot_groups=N``; ``0`` is the table above as is).
"""

from __future__ import annotations

import functools
import hashlib
import re
from urllib.parse import quote

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from ..errors import MollifierConfigurationError

__all__ = [
    "DEPTH_INDEXED_FIELD",
    "DEPTH_TOTAL_FIELD",
    "NO_HEAD",
    "KeySpace",
    "TenantKeys",
    "escape",
    "group_tags",
    "jump_hash",
    "org_group",
    "parse_tenant_member",
    "parse_tenant_tag",
    "tenant_member",
    "tenant_tag",
]

#: The field of the depth hash that counts every QUEUED and DRAINING entry.
DEPTH_TOTAL_FIELD = "total"
#: The field of the depth hash that counts what index-aware scripts counted into ``total``.
DEPTH_INDEXED_FIELD = "indexed"
#: The oldest index's score of an env with nothing QUEUED (``NO_HEAD`` in ``lua/_lib.lua``).
NO_HEAD = 2**53 - 1

# Distinct tenants whose key names are kept precomputed; the cache is emptied when it fills.
_TENANT_CACHE_SIZE = 10_000
# The characters ``quote(value, safe="")`` leaves as they are (message ids are usually UUIDs).
_UNESCAPED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def escape(value: str) -> str:
    """Percent-encode an id so it is safe as one segment of a key name (no ``:`` left)."""
    return quote(value, safe="")


def tenant_tag(org_id: str, env_id: str) -> str:
    """``<byte length of org>:<org>:<env>``, as ``tenant_tag`` in ``lua/_lib.lua`` builds it."""
    return f"{len(org_id.encode())}:{org_id}:{env_id}"


def parse_tenant_tag(tag: bytes) -> tuple[str, str]:
    """The ``(org, env)`` of a :func:`tenant_tag` read back from Redis; ValueError if malformed."""
    length, colon, rest = tag.partition(b":")
    size = int(length)
    if not colon or size < 0 or rest[size : size + 1] != b":":
        raise ValueError(f"not a tenant tag: {tag!r}")
    return rest[:size].decode(), rest[size + 1 :].decode()


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash of a 64-bit ``key`` into ``range(buckets)``."""
    bucket, j = -1, 0
    while j < buckets:
        bucket = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def org_group(org_id: str, groups: int) -> int:
    """The slot group of an org: stable across processes, Python versions and restarts."""
    digest = hashlib.blake2b(org_id.encode("utf-8"), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), groups)


@functools.cache
def group_tags(groups: int) -> tuple[str, ...]:
    """The hash tag of each group: the first ``g<g>.<k>`` whose slot lies in the ``g``-th of
    ``groups`` equal slot ranges (so equal slot ranges per primary get equal shares of groups)."""
    tags = []
    for group in range(groups):
        low = group * REDIS_CLUSTER_HASH_SLOTS // groups
        high = (group + 1) * REDIS_CLUSTER_HASH_SLOTS // groups
        k = 0
        while not low <= key_slot(f"g{group}.{k}".encode()) < high:
            k += 1
        tags.append(f"g{group}.{k}")
    return tuple(tags)


def tenant_member(org_id: str, env_id: str) -> bytes:
    """The listing indexes' member of an env, as ``tenant_member`` in ``lua/_lib.lua`` builds it:
    byte order is (org, env) order, and it is injective whatever the ids contain."""
    return org_id.encode().replace(b"\0", b"\0\1") + b"\0\0" + env_id.encode()


def parse_tenant_member(member: bytes) -> tuple[str, str]:
    """The ``(org, env)`` of a :func:`tenant_member`; ValueError if malformed."""
    org, separator, env = member.partition(b"\0\0")
    if not separator:
        raise ValueError(f"not a tenant member: {member!r}")
    return org.replace(b"\0\1", b"\0").decode(), env.decode()


class TenantKeys:
    """The key names and depth-hash fields of one (org, env), computed once.

    ``trip_keys``, ``accept_keys`` and ``ids`` are what the hot scripts are sent, encoded once
    (UTF-8, as the buffer assumes throughout): redis-py sends ``bytes`` as they are.
    """

    __slots__ = (
        "accept_keys",
        "depth_env_field",
        "depth_org_field",
        "envs",
        "evaluate_keys",
        "failed",
        "failed_envs",
        "ids",
        "member",
        "queue",
        "space",
        "trip_counter",
        "trip_hold",
        "trip_keys",
        "tripped_member",
    )

    def __init__(self, space: KeySpace, org_id: str, env_id: str) -> None:
        #: The key space of the tenant's group (the whole key space without slot groups).
        self.space = space
        prefix = space.prefix
        org, env = escape(org_id), escape(env_id)
        self.queue = f"{prefix}:queue:{org}:{env}"
        self.envs = space.envs(org_id)
        self.failed = f"{prefix}:failed:{org}:{env}"
        self.failed_envs = space.failed_envs(org_id)
        self.trip_counter = f"{prefix}:trip:count:{org}:{env}"
        self.trip_hold = f"{prefix}:trip:hold:{org}:{env}"
        self.depth_org_field = space.depth_org_field(org_id)
        self.tripped_member = tenant_tag(org_id, env_id)
        self.depth_env_field = f"env:{self.tripped_member}"
        #: KEYS 1-3 of the trip scripts: counter, hold marker, tripped registry.
        self.trip_keys = (self.trip_counter.encode(), self.trip_hold.encode(), space.tripped.encode())
        #: KEYS of evaluate_trip.lua: the trip keys, then the depth counters (its backlog).
        self.evaluate_keys = (*self.trip_keys, space.depth.encode())
        #: The env's member of the listing indexes.
        self.member = tenant_member(org_id, env_id)
        #: KEYS 5-12 of evaluate_trip_and_accept.lua: queue, envs of the org, orgs, depth, wake-up,
        #: then the three listing indexes.
        self.accept_keys = tuple(
            name.encode()
            for name in (self.queue, self.envs, space.orgs, space.depth, space.drain_wake, *space.index_keys)
        )
        #: The raw org and env ids.
        self.ids = (org_id.encode(), env_id.encode())


class KeySpace:
    """Maps a key prefix and ids to key names. Cheap to call on the hot path (cached per tenant).

    ``groups`` (``slot_groups``): 0 for the one-group layout of the table above; N > 0 for N
    slot groups, each a key space of its own (:attr:`groups`, :meth:`group_of`). Then the
    per-group names of this object (``orgs``, ``leases``, ``depth``...) are not to be used:
    :meth:`tenant` and :meth:`group_of` give the right group's.
    """

    def __init__(self, prefix: str, *, groups: int = 0) -> None:
        #: The user's key prefix.
        self.user_prefix = prefix
        self.group_count = groups
        #: The runtime enrolment flags (``gate/flags.py`` names the same key).
        self.org_flags = f"{prefix}:org-flags"
        #: The layout this key space writes, recorded in the keyspace (see the module doc).
        self.layout = f"{prefix}:layout"
        #: Each group's key space (this one alone without slot groups).
        self.groups: tuple[KeySpace, ...] = (self,)
        if groups and ("{" in prefix or "}" in prefix):
            raise MollifierConfigurationError(
                f"key_prefix {prefix!r} must not contain braces with slot groups: each group's hash "
                "tag follows the prefix, and a brace in it would become the keys' hash tag instead"
            )
        if groups:
            self.groups = tuple(KeySpace(f"{prefix}:{{{tag}}}") for tag in group_tags(groups))
            prefix = f"{prefix}:{{fleet}}"
        self.prefix = prefix
        self.orgs = f"{prefix}:orgs"
        self.leases = f"{prefix}:leases"
        self.depth = f"{prefix}:depth"
        self.failed_orgs = f"{prefix}:failed-orgs"
        self.tripped = f"{prefix}:tripped"
        #: The operator's runtime rules (see ``rules.py``) and the fleet gauges' lease.
        self.paused = f"{prefix}:paused"
        self.caps = f"{prefix}:caps"
        self.weights = f"{prefix}:weights"
        self.gauges_lease = f"{prefix}:gauges:lease"
        #: The fleet-wide ceiling's window counter and hold marker (``trip_global_threshold``).
        self.global_trip_counter = f"{prefix}:trip:global:count"
        self.global_trip_hold = f"{prefix}:trip:global:hold"
        #: Drained messages in the broker not yet started (the drain budget), and the rate bucket.
        self.outstanding = f"{prefix}:drain:outstanding"
        self.drain_rate = f"{prefix}:drain:rate"
        #: The fleet's consumption rate, which sizes the drain budget.
        self.drain_consumed = f"{prefix}:drain:consumed"
        #: The actors each live drainer's process declares (hash: actor -> last announced, ms).
        self.drain_actors = f"{prefix}:drain:actors"
        #: What idle drainers block on: the first accept into a buffer without queued work pushes.
        self.drain_wake = f"{prefix}:drain:wake"
        #: The tenant listing's indexes (by org and env, by depth, by oldest queued entry).
        self.index_tenants = f"{prefix}:index:tenants"
        self.index_depth = f"{prefix}:index:depth"
        self.index_oldest = f"{prefix}:index:oldest"
        #: The three, in the order every script that maintains them takes them.
        self.index_keys = (self.index_tenants, self.index_depth, self.index_oldest)
        self._entry_prefix = f"{prefix}:entry:"
        self._tenants: dict[tuple[str, str], TenantKeys] = {}

    def group_of(self, org_id: str) -> KeySpace:
        """The key space of the org's group (this one without slot groups)."""
        if not self.group_count:
            return self
        return self.groups[org_group(org_id, self.group_count)]

    def entry(self, message_id: str) -> str:
        """The hash of one entry (in a group's key space: the entry's group is its org's)."""
        # On the diverting hot path: skip quote() for an id it would leave as it is.
        return self._entry_prefix + (message_id if _UNESCAPED(message_id) else escape(message_id))

    def envs(self, org_id: str) -> str:
        """The set of an org's envs with queued work."""
        return f"{self.group_of(org_id).prefix}:envs:{escape(org_id)}"

    def failed_envs(self, org_id: str) -> str:
        """The set of an org's envs with FAILED entries."""
        return f"{self.group_of(org_id).prefix}:failed-envs:{escape(org_id)}"

    def depth_org_field(self, org_id: str) -> str:
        """The depth-hash field that counts an org's QUEUED and DRAINING entries."""
        return f"org:{org_id}"

    def tenant(self, org_id: str, env_id: str) -> TenantKeys:
        """Every per-(org, env) name, from a bounded cache."""
        key = (org_id, env_id)
        keys = self._tenants.get(key)
        if keys is None:
            if len(self._tenants) >= _TENANT_CACHE_SIZE:
                self._tenants.clear()
            keys = self._tenants[key] = TenantKeys(self.group_of(org_id), org_id, env_id)
        return keys
