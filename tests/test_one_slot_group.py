"""``slot_groups=1`` (everything under one hash tag, README "Redis Cluster"): the buffer's keys
are the group's, not the one-server names, for every reader too (the drainer found no org and
``get`` no entry: buffered messages stayed buffered for good)."""

from __future__ import annotations

import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.models import BufferEntry, EntryStatus


def test_one_slot_group_is_read_where_it_is_written(redis_client: redis.Redis, key_prefix: str) -> None:
    # Given a message buffered under one slot group
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, slot_groups=1)
    assert buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")

    # Then it is found, and the drainer's window has its org
    entry = buffer.get("m1")
    assert entry is not None and entry.status is EntryStatus.QUEUED
    assert DrainProtocol(buffer).org_window(None, 10) == ["acme"]

    # And a drainer drains it
    handled: list[BufferEntry] = []
    drainer = MollifierDrainer(buffer, handled.append, idle_wait_ms=0)
    try:
        drainer.run_once()
    finally:
        drainer.stop()
    assert [entry.message_id for entry in handled] == ["m1"]
    assert buffer.depth() == 0
