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


class IndexScripts:
    """The listing's read-only scripts and the index repair script, on one client (no I/O)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.env_depths = client.register_script(script_source("env_depths"))
        self.queue_heads = client.register_script(script_source("queue_heads"))
        self.created_at = client.register_script(script_source("created_at"))
        self.reindex_env = client.register_script(script_source("reindex_env"))
        #: When this process last rebuilt the indexes (monotonic ms), for REBUILD_INTERVAL_MS.
        self.rebuilt_at_ms: float | None = None


def queue_heads(scripts: IndexScripts, keys: KeySpace, tenants: Sequence[_Key]) -> list[str | None]:
    """The head id of each env's queue (None: empty), from one script call answering one string."""
    if not tenants:
        return []
    queues = [keys.tenant(org, env).queue for org, env in tenants]
    frames: bytes = run(scripts.client, scripts.queue_heads, len(queues), *queues)
    heads: list[str | None] = []
    at = 0
    while at < len(frames):
        (length,) = _HEAD_HEADER.unpack_from(frames, at)
        at += _HEAD_HEADER.size
        heads.append(None if length < 0 else frames[at : (at := at + length)].decode())
    return heads


def head_created_at(scripts: IndexScripts, keys: KeySpace, tenants: Sequence[_Key]) -> list[int | None]:
    """The ``created_at_ms`` of each env's queue head (None: nothing queued, or the head's entry
    is gone): each queue's head id, then those entries' times, a few scripts whatever the queues
    hold, each answering one string."""
    found: list[int | None] = []
    for start in range(0, len(tenants), _CHUNK):
        chunk = tenants[start : start + _CHUNK]
        heads = queue_heads(scripts, keys, chunk)
        entries = [keys.entry(head) for head in heads if head is not None]
        created = iter(
            struct.unpack(
                f">{len(entries)}q", run(scripts.client, scripts.created_at, len(entries), *entries)
            )
            if entries
            else ()
        )
        for head in heads:
            at_ms = next(created) if head is not None else -1
            found.append(at_ms if at_ms >= 0 else None)
    return found


def reindex(scripts: IndexScripts, keys: KeySpace, tenants: Iterable[_Key], *, settle: bool = False) -> None:
    """Bring the index entries of ``tenants`` in line with their depth counters and queue heads,
    each env atomically (``reindex_env.lua``, :data:`_REINDEX_BATCH` envs per call): the heads
    read in one script call, then the calls pipelined. ``settle``: the last call also sets the
    depth hash's ``indexed`` count to its ``total`` (the end of a rebuild)."""
    pending = list(tenants)
    head_keys = [keys.depth, *keys.index_keys]
    calls: list[tuple[Sequence[str | bytes], Sequence[str | int | bytes]]] = []
    for start in range(0, len(pending), _CHUNK):
        chunk = pending[start : start + _CHUNK]
        heads = queue_heads(scripts, keys, chunk)
        for at in range(0, len(chunk), _REINDEX_BATCH):
            call_keys: list[str | bytes] = [*head_keys]
            call_args: list[str | int | bytes] = ["0"]
            for (org, env), head in zip(
                chunk[at : at + _REINDEX_BATCH], heads[at : at + _REINDEX_BATCH], strict=True
            ):
                queue = keys.tenant(org, env).queue
                call_keys += (queue, keys.entry(head) if head is not None else queue)
                call_args += (org, env, head or "")
            calls.append((call_keys, call_args))
    if settle:
        if not calls:
            calls.append(([*head_keys], ["0"]))
        calls[-1] = (calls[-1][0], ["1", *calls[-1][1][1:]])
    for start in range(0, len(calls), _CALLS_PER_ROUND_TRIP):
        run_pipelined(scripts.client, scripts.reindex_env, calls[start : start + _CALLS_PER_ROUND_TRIP])


def rebuild(scripts: IndexScripts, keys: KeySpace, env_depths: Iterable[_Key]) -> None:
    """Rebuild the indexes: every env of the depth counters (``env_depths``) and every env the
    indexes list now, reindexed; then ``indexed`` set to ``total``."""
    client = scripts.client
    pipe = client.pipeline(transaction=False)
    for name in keys.index_keys:
        pipe.zrange(name, 0, -1)
    listed: set[_Key] = set(env_depths)
    for members in pipe.execute():
        for member in members:
            try:
                listed.add(parse_tenant_member(member))
            except ValueError:  # not ours: drop it
                client.zrem(keys.index_tenants, member)
                client.zrem(keys.index_depth, member)
                client.zrem(keys.index_oldest, member)
    reindex(scripts, keys, sorted(listed), settle=True)
    scripts.rebuilt_at_ms = time.monotonic() * 1000


def ensure_index(scripts: IndexScripts, keys: KeySpace, env_depths: Any) -> bool:
    """Rebuild the indexes when the depth counters say code older than them wrote the buffer
    (``indexed != total``), at most once per :data:`REBUILD_INTERVAL_MS` per process. Returns
    whether it rebuilt. ``env_depths``: a callable reading every env's depth (the rebuild's)."""
    total, indexed = scripts.client.hmget(keys.depth, [DEPTH_TOTAL_FIELD, DEPTH_INDEXED_FIELD])
    if int(total or 0) == int(indexed or 0):
        return False
    last = scripts.rebuilt_at_ms
    if last is not None and time.monotonic() * 1000 - last < REBUILD_INTERVAL_MS:
        return False
    rebuild(scripts, keys, env_depths())
    return True
