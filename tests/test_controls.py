"""TenantControls against a real Redis: lookup in each state, cancel, pause, caps, weights."""

from __future__ import annotations

import pytest
import redis

from dramatiq_mollifier import MessageLookup, MollifierSettings, PausedTenant, TenantCap, TenantControls
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.controls import CancelOutcome
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.buffer.rules import read_rules
from dramatiq_mollifier.drain.cancel_check import CancelCheck, LeaseLost

from .layout_helpers import entry_key, group


def fill(buffer: MollifierBuffer, org: str, env: str, count: int, start: int = 0) -> list[str]:
    ids = [f"{org}-{env}-{n}" for n in range(start, start + count)]
    for message_id in ids:
        assert buffer.accept(message_id, org_id=org, env_id=env, payload=b"p-" + message_id.encode())
    return ids


def next_server_millisecond(buffer: MollifierBuffer) -> None:
    """Return once the Redis server's clock (which stamps accepts) is in a later millisecond."""

    def server_ms() -> int:
        seconds, micros = buffer.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    start = server_ms()
    while server_ms() <= start:
        pass


def test_lookup_in_each_state(buffer: MollifierBuffer) -> None:
    controls = buffer.controls
    ids = fill(buffer, "acme", "prod", 3)
    drain = DrainProtocol(buffer)

    # Queued: its position in its env's queue, 0-based
    third = controls.lookup(ids[2])
    assert (third.state, third.org_id, third.env_id, third.position, third.attempts) == (
        "queued",
        "acme",
        "prod",
        2,
        0,
    )
    assert third.age_ms is not None and 0 <= third.age_ms < 60_000
    assert third.error is None and third.mode == "divert"

    # Draining: popped under a lease, no position
    (popped,) = drain.pop_many("acme", "prod", 1)
    assert popped.message_id == ids[0]
    found = controls.lookup(ids[0])
    assert found == MessageLookup(
        ids[0], "draining", org_id="acme", env_id="prod", attempts=0, age_ms=found.age_ms, mode="divert"
    )
    assert controls.lookup(ids[1]).position == 0

    # Dead-lettered: with its error
    assert drain.fail(ids[0], code="BoomError", message="it broke")
    dead = controls.lookup(ids[0])
    assert (dead.state, dead.error, dead.position) == ("dead_lettered", ("BoomError", "it broke"), None)

    # Absent
    assert controls.lookup("never-sent") == MessageLookup("never-sent", "absent")


def test_cancel_by_id_removes_queued_and_draining_entries_and_leaves_dead_letters(
    buffer: MollifierBuffer,
) -> None:
    controls = buffer.controls
    ids = fill(buffer, "acme", "prod", 4)
    drain = DrainProtocol(buffer)
    (popped,) = drain.pop_many("acme", "prod", 1)
    assert drain.fail(ids[3], code="E", message="m")

    # ids[0] draining, ids[1] queued, ids[3] dead-lettered, one unknown
    assert controls.cancel([popped.message_id, ids[1], ids[3], "unknown"]) == 2

    assert [controls.lookup(i).state for i in ids] == ["absent", "absent", "queued", "dead_lettered"]
    assert buffer.depth() == 1 and buffer.depth("acme", "prod") == 1
    assert controls.lookup(ids[2]).position == 0
    assert buffer.client.zcard(group(buffer, "acme").leases) == 0
    # The popped one's drainer finds it gone right before its broker write
    assert CancelCheck(buffer.client, buffer.keys)(popped) is True


def test_a_committed_entry_is_too_late_to_cancel_until_it_is_given_back(buffer: MollifierBuffer) -> None:
    controls = buffer.controls
    ids = fill(buffer, "acme", "prod", 6)
    drain = DrainProtocol(buffer)
    check = CancelCheck(buffer.client, buffer.keys)
    entries = drain.pop_many("acme", "prod", 6)
    check.popped(entries)
    # The first handler at its broker write commits the batch: too late for every one of them
    assert check(entries[0]) is False
    outcome = controls.cancel_each([*ids, "unknown"])
    assert outcome == CancelOutcome([], ids, ["unknown"])
    assert controls.cancel_tenant("acme") == 0
    assert buffer.depth() == 6 and [controls.lookup(i).state for i in ids] == ["draining"] * 6

    # Requeued, given back, dead-lettered, reclaimed: the mark goes with the lease
    assert drain.requeue(ids[1], org_id="acme", env_id="prod", owner=entries[1].lease_owner)
    assert drain.release([entries[2]]) == 1
    assert drain.fail(ids[3], code="E", message="m", owner=entries[3].lease_owner)
    buffer.client.zadd(group(buffer, "acme").leases, {ids[4]: 0})  # its lease expired
    assert drain.reclaim_expired() == [ids[4]]
    assert controls.cancel_each(ids) == CancelOutcome([ids[1], ids[2], ids[4]], [ids[0], ids[5]], [ids[3]])

    # Popped again after a requeue: cancellable until that pop's own commit
    fill(buffer, "acme", "prod", 2, start=10)
    again = drain.pop_many("acme", "prod", 2)
    assert controls.cancel([again[0].message_id]) == 1
    assert check(again[0]) is True
    assert check(again[1]) is False
    assert controls.cancel_each([again[1].message_id]).too_late == [again[1].message_id]


def test_a_drainer_whose_lease_passed_on_does_not_commit_or_write(buffer: MollifierBuffer) -> None:
    ids = fill(buffer, "acme", "prod", 1)
    drain = DrainProtocol(buffer)
    (stale,) = drain.pop_many("acme", "prod", 1)
    buffer.client.zadd(group(buffer, "acme").leases, {ids[0]: 0})
    assert drain.reclaim_expired() == ids
    (fresh,) = drain.pop_many("acme", "prod", 1)
    with pytest.raises(LeaseLost):
        CancelCheck(buffer.client, buffer.keys)(stale)
    # Not committed by the stale drainer: the new owner's entry can still be cancelled
    assert buffer.controls.cancel_each(ids).cancelled == ids
    assert fresh.lease_owner != stale.lease_owner


def test_cancel_an_env_then_an_org(buffer: MollifierBuffer) -> None:
    controls = buffer.controls
    fill(buffer, "acme", "prod", 1200)  # more than one cancel batch
    fill(buffer, "acme", "dev", 5)
    other = fill(buffer, "globex", "prod", 3)
    drain = DrainProtocol(buffer)
    drain.pop_many("acme", "dev", 2)

    assert controls.cancel_tenant("acme", "prod") == 1200
    assert buffer.depth("acme", "prod") == 0
    assert buffer.envs("acme") == ["dev"]

    assert controls.cancel_tenant("acme") == 5  # three queued, two draining
    assert buffer.depth("acme") == 0
    assert buffer.orgs() == ["globex"]
    assert buffer.client.zcard(group(buffer, "acme").leases) == 0
    assert [controls.lookup(i).state for i in other] == ["queued"] * 3
    assert buffer.depth() == 3


def test_cancel_tenant_removes_references_whose_entry_vanished(buffer: MollifierBuffer) -> None:
    ids = fill(buffer, "acme", "prod", 3)
    buffer.client.delete(entry_key(buffer, ids[1], "acme"))  # evicted, say

    assert buffer.controls.cancel_tenant("acme", "prod") == 2
    assert buffer.client.llen(buffer.keys.tenant("acme", "prod").queue) == 0
    assert buffer.depth() == 0
    assert buffer.orgs() == []


def test_pause_and_resume_are_recorded_once_and_listed(buffer: MollifierBuffer) -> None:
    controls = buffer.controls
    assert controls.pause("acme")
    assert not controls.pause("acme")
    assert controls.pause("globex", "prod")
    paused = controls.paused()
    assert [(p.org_id, p.env_id) for p in paused] == [("acme", None), ("globex", "prod")]
    assert all(isinstance(p, PausedTenant) and p.paused_at_ms > 1_600_000_000_000 for p in paused)

    rules = read_rules(buffer.client, buffer.keys)
    assert rules.is_paused("acme", "anything") and rules.org_paused("acme")
    assert rules.is_paused("globex", "prod") and not rules.is_paused("globex", "dev")

    assert controls.resume("acme")
    assert not controls.resume("acme")
    assert [(p.org_id, p.env_id) for p in controls.paused()] == [("globex", "prod")]
    with pytest.raises(ValueError):
        controls.pause("")


def test_caps_and_weights_overrides_round_trip(buffer: MollifierBuffer) -> None:
    controls = buffer.controls
    controls.set_cap("acme", limit=100)
    controls.set_cap("acme", "prod", limit=10)
    controls.set_weight("acme", 3)
    assert controls.caps() == [TenantCap("acme", None, 100), TenantCap("acme", "prod", 10)]
    assert controls.weights() == {"acme": 3}
    rules = read_rules(buffer.client, buffer.keys)
    assert rules.limits("acme", "prod", None, None) == (10, 100)
    assert rules.limits("acme", "dev", 7, None) == (7, 100)
    assert rules.weight("acme") == 3 and rules.weight("globex") == 1

    controls.set_cap("acme", "prod", limit=None)
    controls.set_weight("acme", None)
    assert controls.caps() == [TenantCap("acme", None, 100)]
    assert controls.weights() == {}
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError):
            controls.set_cap("acme", limit=bad)  # type: ignore[arg-type]
    for bad_weight in (0, 101):
        with pytest.raises(ValueError):
            controls.set_weight("acme", bad_weight)


def test_tenants_pages_rows_with_every_column(buffer: MollifierBuffer, key_prefix: str) -> None:
    settings = MollifierSettings(enabled_orgs={"acme"}, key_prefix=key_prefix, cap_per_env=500)
    controls = TenantControls(buffer.client, key_prefix=key_prefix, settings=settings)
    fill(buffer, "acme", "prod", 5)
    # The server's clock past the last accept's millisecond: acme/prod's head is strictly older
    # than the others (in one millisecond the "oldest" order fell back to the names).
    next_server_millisecond(buffer)
    fill(buffer, "acme", "dev", 2)
    fill(buffer, "globex", "prod", 9)
    controls.pause("acme", "dev")
    controls.set_cap("globex", limit=50)
    controls.set_weight("globex", 2)
    buffer.client.hset(buffer.keys.org_flags, "globex", "true")
    buffer.evaluate_trip("globex", "prod", window_ms=60_000, threshold=0, hold_ms=60_000)

    page = controls.tenants(limit=2)
    assert page.total == 3 and (page.offset, page.limit) == (0, 2)
    assert [(r.org_id, r.env_id, r.depth) for r in page.rows] == [("acme", "dev", 2), ("acme", "prod", 5)]
    dev = page.rows[0]
    assert dev.paused and not dev.tripped and dev.cap == 500 and dev.weight == 1 and dev.enrolled
    assert dev.oldest_age_ms is not None

    (globex,) = controls.tenants(offset=2, limit=2).rows
    assert (globex.org_id, globex.tripped, globex.paused, globex.org_cap, globex.weight, globex.enrolled) == (
        "globex",
        True,
        False,
        50,
        2,
        True,
    )
    by_depth = controls.tenants(sort="depth")
    assert [r.depth for r in by_depth.rows] == [9, 5, 2]
    by_age = controls.tenants(sort="oldest")
    assert (by_age.rows[0].org_id, by_age.rows[0].env_id) == ("acme", "prod")  # filled first
    assert controls.tenants(filter="glob").total == 1
    # Without settings: enrolment unknown
    assert buffer.controls.tenants().rows[0].enrolled is None
    with pytest.raises(ValueError):
        controls.tenants(sort="size")


def test_a_controls_call_raises_buffer_unavailable_when_redis_is_down(key_prefix: str) -> None:
    from dramatiq_mollifier.errors import BufferUnavailableError

    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(BufferUnavailableError):
        TenantControls(client, key_prefix=key_prefix).lookup("x")


def test_the_rules_view_refreshes_in_the_background_and_stops_with_its_owner(buffer: MollifierBuffer) -> None:
    import gc
    import threading

    from dramatiq_mollifier.buffer.rules import RulesView

    from .mollifier_helpers import eventually

    views = [RulesView(lambda: read_rules(buffer.client, buffer.keys), refresh_ms=20)]
    before = set(threading.enumerate())
    assert not views[0].current().paused  # starts the refresh, answers at once
    (thread,) = [t for t in set(threading.enumerate()) - before if t.name == "mollifier-rules-refresh"]

    # No send, no call: the pause still reaches the view
    buffer.controls.pause("acme")
    eventually(lambda: views[0].current().org_paused("acme"), 2, "the pause to reach the view")

    views.clear()
    gc.collect()
    thread.join(2)
    assert not thread.is_alive()


def test_a_forked_child_reads_the_rules_with_a_thread_of_its_own(buffer: MollifierBuffer) -> None:
    import threading

    from dramatiq_mollifier.buffer.rules import RulesView

    from .mollifier_helpers import eventually, in_forked_child

    view = RulesView(lambda: read_rules(buffer.client, buffer.keys), refresh_ms=20)
    view.current()  # the parent's refresh thread

    def child() -> int:
        # The fork hook made the child's first read start its own thread, which sees a pause
        view.current()
        threads = [t for t in threading.enumerate() if t.name == "mollifier-rules-refresh"]
        buffer.controls.pause("child-org")
        eventually(lambda: view.current().org_paused("child-org"), 5, "the pause in the child")
        return len(threads)

    status, threads_in_child = in_forked_child(child)
    assert status == 0
    assert threads_in_child == 1


def test_a_fork_no_hook_saw_is_noticed_within_the_pid_check_interval(buffer: MollifierBuffer) -> None:
    import threading
    import time

    from dramatiq_mollifier.buffer.rules import PID_CHECK_MS, RulesView

    view = RulesView(lambda: read_rules(buffer.client, buffer.keys), refresh_ms=20)
    view.current()
    # As after a C-level fork that ran no Python fork hook: the view's process id is not ours
    view._pid = -1
    before = {t for t in threading.enumerate() if t.name == "mollifier-rules-refresh"}
    deadline = time.monotonic() + PID_CHECK_MS / 1000 + 0.5
    started: set[threading.Thread] = set()
    while not started and time.monotonic() < deadline:
        view.current()
        started = {t for t in threading.enumerate() if t.name == "mollifier-rules-refresh"} - before
    assert started, "the view never noticed it was in another process"
    view.close()
