"""The tenant listing's indexes: read a page as a range, repair what is stale, rebuild when absent.

Three sorted sets (``keys.py``) list every env with QUEUED or DRAINING entries: by org and env
(``index:tenants``, scores 0, so an org-id prefix is a ``ZRANGEBYLEX`` range), by depth
(``index:depth``, score minus the depth) and by the age of the queue's head (``index:oldest``,
score its ``created_at_ms``). Every script that changes an env's depth or its queue's head updates
them in the same call (``index_env`` in ``lua/_lib.lua``), so a page of 50 is one range read
whatever the number of tenants.

Two things can leave an entry stale, and the listing repairs both (``lua/reindex_env.lua``, env by
env, atomically):

- a script that removes a queue's head without having been given the next head's entry (a cancel,
  a pop that lost a race) scores the env 0, "not known": such envs sort first by age, and the
  listing repairs every one of them before it reads a page by age. An entry that expires (entry
  TTL) at the head leaves an older score than the truth, never a later one. So a score is never
  later than the truth, and the rows of a page sorted by age are checked against the queues and
  repaired until they agree: the first page by age is exact.
- code older than the indexes (a rolling deploy) changes depths without them. Index-aware
  scripts count every depth change twice in the depth hash (``total`` and ``indexed``); old code
  moves ``total`` alone. When the two differ the listing rebuilds the indexes from the depth
  counters and the queues' heads (once per :data:`REBUILD_INTERVAL_MS` at most while they keep
  differing), and every page checks its rows' depths against the counters and repairs those that
  disagree. The first listing after an upgrade rebuilds; with 10,000 envs that takes about half
  a second of CPU and as much of Redis time in short script calls (``bench_dashboard.py``), once.

With slot groups (``slot_groups`` > 0, Redis Cluster) each group has its own three indexes under
its hash tag, kept by the scripts of that group, and its own ``total``/``indexed`` pair: stale
entries are repaired, and a group rebuilt, group by group (every script call touches one slot).
The listing merges the groups' ranges (``listing.py``).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from .keys import DEPTH_INDEXED_FIELD, DEPTH_TOTAL_FIELD, KeySpace, parse_tenant_member
from .scripts import run, run_pipelined, script_source

__all__ = [
    "REBUILD_INTERVAL_MS",
    "IndexScripts",
    "ensure_index",
    "head_created_at",
    "queue_heads",
    "rebuild",
    "reindex",
]

#: While the depth hash's ``indexed`` and ``total`` keep differing (code older than the indexes
#: still runs), the indexes are rebuilt at most this often by one listing process.
REBUILD_INTERVAL_MS = 60_000

_Key = tuple[str, str]
_HEAD_HEADER = struct.Struct(">i")
# Queues (or entries) per script call that reads heads.
_CHUNK = 2_000
# Envs per call of reindex_env.lua (a short script run: others' commands go in between), and
# calls per pipelined round trip.
_REINDEX_BATCH = 50
_CALLS_PER_ROUND_TRIP = 40
_Call = tuple[Sequence[str | bytes], Sequence[str | int | bytes]]


class IndexScripts:
    """The listing's read-only scripts and the index repair script, on one client (no I/O)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.env_depths = client.register_script(script_source("env_depths"))
        self.queue_heads = client.register_script(script_source("queue_heads"))
        self.created_at = client.register_script(script_source("created_at"))
        self.reindex_env = client.register_script(script_source("reindex_env"))
        #: When this process last rebuilt each group's indexes (monotonic ms, by the group's
        #: prefix), for REBUILD_INTERVAL_MS.
        self.rebuilt_at_ms: dict[str, float] = {}


def _split(keys: KeySpace, tenants: Sequence[_Key]) -> list[tuple[KeySpace, list[int]]]:
    """The positions of ``tenants`` by slot group (each script call reads one group's slot)."""
    found: dict[int, tuple[KeySpace, list[int]]] = {}
    for i, (org, _) in enumerate(tenants):
        space = keys.group_of(org)
        found.setdefault(id(space), (space, []))[1].append(i)
    return list(found.values())


def queue_heads(scripts: IndexScripts, keys: KeySpace, tenants: Sequence[_Key]) -> list[str | None]:
    """The head id of each env's queue (None: empty), one script call per group answering one
    string."""
    found: list[str | None] = [None] * len(tenants)
    for _, positions in _split(keys, tenants):
        queues = [keys.tenant(*tenants[i]).queue for i in positions]
        frames: bytes = run(scripts.client, scripts.queue_heads, len(queues), *queues)
        at = 0
        for i in positions:
            (length,) = _HEAD_HEADER.unpack_from(frames, at)
            at += _HEAD_HEADER.size
            found[i] = None if length < 0 else frames[at : (at := at + length)].decode()
    return found


def head_created_at(scripts: IndexScripts, keys: KeySpace, tenants: Sequence[_Key]) -> list[int | None]:
    """The ``created_at_ms`` of each env's queue head (None: nothing queued, or the head's entry
    is gone): each queue's head id, then those entries' times, a few scripts (per group) whatever
    the queues hold, each answering one string."""
    found: list[int | None] = [None] * len(tenants)
    for space, positions in _split(keys, tenants):
        for start in range(0, len(positions), _CHUNK):
            chunk = positions[start : start + _CHUNK]
            heads = queue_heads(scripts, keys, [tenants[i] for i in chunk])
            entries = [space.entry(head) for head in heads if head is not None]
            created = iter(
                struct.unpack(
                    f">{len(entries)}q", run(scripts.client, scripts.created_at, len(entries), *entries)
                )
                if entries
                else ()
            )
            for i, head in zip(chunk, heads, strict=True):
                at_ms = next(created) if head is not None else -1
                found[i] = at_ms if at_ms >= 0 else None
    return found


def reindex(scripts: IndexScripts, keys: KeySpace, tenants: Iterable[_Key]) -> None:
    """Bring the index entries of ``tenants`` in line with their depth counters and queue heads,
    each env atomically (``reindex_env.lua``, :data:`_REINDEX_BATCH` envs per call, each call in
    one group): the heads read in one script call per group, then the calls pipelined."""
    pending = list(tenants)
    calls: list[_Call] = []
    for space, positions in _split(keys, pending):
        calls += _reindex_calls(scripts, keys, space, [pending[i] for i in positions], settle=False)
    _run_calls(scripts, calls)


def _reindex_calls(
    scripts: IndexScripts, keys: KeySpace, space: KeySpace, tenants: Sequence[_Key], *, settle: bool
) -> list[_Call]:
    """reindex_env.lua's calls for envs of one group (``space``). ``settle``: the last call also
    sets the group's ``indexed`` count to its ``total`` (the end of a rebuild)."""
    head_keys = [space.depth, *space.index_keys]
    calls: list[_Call] = []
    for start in range(0, len(tenants), _CHUNK):
        chunk = tenants[start : start + _CHUNK]
        heads = queue_heads(scripts, keys, chunk)
        for at in range(0, len(chunk), _REINDEX_BATCH):
            call_keys: list[str | bytes] = [*head_keys]
            call_args: list[str | int | bytes] = ["0"]
            for (org, env), head in zip(
                chunk[at : at + _REINDEX_BATCH], heads[at : at + _REINDEX_BATCH], strict=True
            ):
                queue = keys.tenant(org, env).queue
                call_keys += (queue, space.entry(head) if head is not None else queue)
                call_args += (org, env, head or "")
            calls.append((call_keys, call_args))
    if settle:
        if not calls:
            calls.append(([*head_keys], ["0"]))
        calls[-1] = (calls[-1][0], ["1", *calls[-1][1][1:]])
    return calls


def _run_calls(scripts: IndexScripts, calls: list[_Call]) -> None:
    for start in range(0, len(calls), _CALLS_PER_ROUND_TRIP):
        run_pipelined(scripts.client, scripts.reindex_env, calls[start : start + _CALLS_PER_ROUND_TRIP])


def rebuild(scripts: IndexScripts, keys: KeySpace, space: KeySpace, env_depths: Iterable[_Key]) -> None:
    """Rebuild one group's indexes (``space``; the key space itself without slot groups): every
    env of its depth counters (``env_depths``) and every env its indexes list now, reindexed;
    then its ``indexed`` set to its ``total``."""
    client = scripts.client
    pipe = client.pipeline(transaction=False)
    for name in space.index_keys:
        pipe.zrange(name, 0, -1)
    listed: set[_Key] = set(env_depths)
    for members in pipe.execute():
        for member in members:
            try:
                listed.add(parse_tenant_member(member))
            except ValueError:  # not ours: drop it
                for name in space.index_keys:
                    client.zrem(name, member)
    _run_calls(scripts, _reindex_calls(scripts, keys, space, sorted(listed), settle=True))
    scripts.rebuilt_at_ms[space.prefix] = time.monotonic() * 1000


def ensure_index(scripts: IndexScripts, keys: KeySpace, env_depths: Any) -> bool:
    """Rebuild each group's indexes when its depth counters say code older than them wrote it
    (``indexed != total``), at most once per :data:`REBUILD_INTERVAL_MS` per group and process.
    Returns whether it rebuilt any. ``env_depths``: a callable taking a group's key space and
    reading every env's depth of that group (the rebuild's). One pipelined read of every group's
    two counters when nothing needs rebuilding."""
    pipe = scripts.client.pipeline(transaction=False)
    for space in keys.groups:
        pipe.hmget(space.depth, [DEPTH_TOTAL_FIELD, DEPTH_INDEXED_FIELD])
    rebuilt = False
    now_ms = time.monotonic() * 1000
    for space, (total, indexed) in zip(keys.groups, pipe.execute(), strict=True):
        if int(total or 0) == int(indexed or 0):
            continue
        last = scripts.rebuilt_at_ms.get(space.prefix)
        if last is not None and now_ms - last < REBUILD_INTERVAL_MS:
            continue
        rebuild(scripts, keys, space, env_depths(space))
        rebuilt = True
    return rebuilt
