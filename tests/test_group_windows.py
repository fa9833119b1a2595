"""The drainer's window over slot groups (``buffer/groups.py``): an idle group is read about once
a second, but a group whose entries are all in flight (leased, e.g. held out a retry delay by
another drainer) is read on every tick, so work coming back to it is seen at once.

On the session's server with slot groups (on one server or, in the cluster pass, the cluster).
"""

from __future__ import annotations

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.buffer.groups import EMPTY_GROUP_RECHECK_S, GroupWindows


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def grouped(redis_client: redis.Redis, key_prefix: str) -> MollifierBuffer:
    return MollifierBuffer(redis_client, key_prefix=key_prefix, slot_groups=4)


def test_an_idle_group_is_read_again_only_after_the_recheck_interval(grouped: MollifierBuffer) -> None:
    clock = Clock()
    windows = GroupWindows(grouped.keys.groups, clock=clock)
    assert windows.org_window(grouped.client, None, 10) == []
    # Work accepted into a group just found idle (no queued work, nothing in flight)
    grouped.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    # is not seen before the recheck interval is over: an idle tick reads no group
    assert windows.org_window(grouped.client, None, 10) == []
    clock.now += EMPTY_GROUP_RECHECK_S
    assert windows.org_window(grouped.client, None, 10) == ["acme"]


def test_a_group_whose_entries_are_all_in_flight_is_read_on_the_next_tick(grouped: MollifierBuffer) -> None:
    # Given another drainer holding the group's only entry (leased, as during its retry delay)
    grouped.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    other = DrainProtocol(grouped)
    (entry,) = other.pop_many("acme", "prod", 10)
    clock = Clock()
    windows = GroupWindows(grouped.keys.groups, clock=clock)
    assert windows.org_window(grouped.client, None, 10) == []
    # When its delay ends and it gives the entry back, with no time passing for this window
    assert other.requeue(entry.message_id, org_id="acme", env_id="prod", owner=entry.lease_owner)
    # Then this drainer sees it on its next tick, not a recheck interval later
    assert windows.org_window(grouped.client, None, 10) == ["acme"]
    assert windows.org_window(grouped.client, "acme", 10) == ["acme"]


def test_while_a_group_has_work_an_org_arriving_in_an_empty_group_is_seen_on_the_next_tick(
    grouped: MollifierBuffer,
) -> None:
    # Given a drainer busy with one group's org, the other groups found empty
    busy = "acme"
    late = next(
        f"late{k}"
        for k in range(1000)
        if grouped.keys.group_of(f"late{k}") is not grouped.keys.group_of(busy)
    )
    grouped.accept("m1", org_id=busy, env_id="prod", payload=b"x")
    clock = Clock()
    windows = GroupWindows(grouped.keys.groups, clock=clock)
    assert windows.org_window(grouped.client, None, 10) == [busy]
    # When an org's work arrives in a group found empty a moment ago
    grouped.accept("m2", org_id=late, env_id="prod", payload=b"x")
    # Then the next tick's window has it, with no time passing (it gets its turn in this
    # rotation, not after the busy org drained on alone for a recheck interval)
    # (after the cursor "acme": "late..." first, then the window wraps round to "acme")
    assert windows.org_window(grouped.client, busy, 10) == [late, busy]
