"""Fairness: orgs first, then envs within an org; a sliding org window; bounded cursor state."""

from __future__ import annotations

import threading
from collections import Counter

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.drainer import DrainResult, MollifierDrainer
from dramatiq_mollifier.drain.rotation import OrgEnvRotation
from dramatiq_mollifier.models import BufferEntry

from .layout_helpers import orgs_of_one_group
from .mollifier_helpers import eventually


class Log:
    """A handler that records (org, env, message id) in the order the handler saw them."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, entry: BufferEntry) -> None:
        with self._lock:
            self.entries.append((entry.org_id, entry.env_id, entry.message_id))

    def take(self) -> list[tuple[str, str, str]]:
        with self._lock:
            taken, self.entries = self.entries, []
        return taken


def seed(buffer: MollifierBuffer, org: str, env: str, count: int) -> None:
    for i in range(count):
        buffer.accept(f"{org}/{env}/{i}", org_id=org, env_id=env, payload=b"x")


def next_window(buffer: MollifierBuffer, rotation: OrgEnvRotation) -> list[str]:
    """One tick's choice of orgs, as the drainer makes it."""
    return rotation.pick_orgs(DrainProtocol(buffer).org_window(rotation.org_cursor, rotation.max_orgs))


# The rotation -------------------------------------------------------------------------------
def next_window_all_served(buffer: MollifierBuffer, rotation: OrgEnvRotation) -> list[str]:
    """One tick that serves every org of its window, as an unpaced drainer does."""
    window = next_window(buffer, rotation)
    for org in window:
        rotation.visited(org)
    return window


def test_each_tick_starts_after_the_last_org_served_and_wraps(buffer: MollifierBuffer) -> None:
    for org in ("e", "c", "a", "d", "b"):
        seed(buffer, org, "prod", 1)
    rotation = OrgEnvRotation(max_orgs=3)

    windows = [next_window_all_served(buffer, rotation) for _ in range(4)]

    assert windows == [["a", "b", "c"], ["d", "e", "a"], ["b", "c", "d"], ["e", "a", "b"]]


def test_an_org_the_tick_did_not_serve_comes_first_next_tick(buffer: MollifierBuffer) -> None:
    for org in ("a", "b", "c", "d"):
        seed(buffer, org, "prod", 1)
    rotation = OrgEnvRotation(max_orgs=4)
    assert next_window(buffer, rotation) == ["a", "b", "c", "d"]
    rotation.visited("a")  # the budget ran out at b

    assert next_window(buffer, rotation) == ["b", "c", "d", "a"]


def test_the_org_cursor_does_not_skip_the_next_org_when_the_current_one_leaves(
    buffer: MollifierBuffer,
) -> None:
    for org in ("a", "b", "c"):
        seed(buffer, org, "prod", 1)
    rotation = OrgEnvRotation(max_orgs=1)
    assert next_window_all_served(buffer, rotation) == ["a"]

    # a drained empty and left the org set: b is next, not c.
    DrainProtocol(buffer).ack("a/prod/0")
    assert next_window_all_served(buffer, rotation) == ["b"]
    assert next_window_all_served(buffer, rotation) == ["c"]


def test_envs_of_an_org_rotate_and_envs_of_other_orgs_have_their_own_cursor() -> None:
    rotation = OrgEnvRotation(max_orgs=10)
    envs = ["dev", "prod", "staging"]

    picks = [rotation.pick_env("a", envs) for _ in range(4)]
    other = rotation.pick_env("b", envs)

    assert picks == ["dev", "prod", "staging", "dev"]
    assert other == "dev"


def test_env_cursors_outlive_the_window_and_stay_bounded() -> None:
    rotation = OrgEnvRotation(max_orgs=2)
    assert rotation.pick_env("a", ["e1", "e2", "e3"]) == "e1"
    for i in range(rotation.max_env_cursors + 500):
        rotation.pick_env(f"org-{i}", ["prod"])
        rotation.pick_env("a", ["e1", "e2", "e3"])  # a stays recently used
        assert rotation.cursor_count <= rotation.max_env_cursors
    # a's cursor survived: it goes on where it was, not back at its first env.
    picks = {rotation.pick_env("a", ["e1", "e2", "e3"]) for _ in range(3)}
    assert picks == {"e1", "e2", "e3"}


# Against the real server ---------------------------------------------------------------------
def test_max_orgs_per_tick_bounds_the_orgs_visited_and_the_next_tick_goes_on(buffer: MollifierBuffer) -> None:
    for i in range(6):
        seed(buffer, f"org{i}", "prod", 3)
    log = Log()
    drainer = MollifierDrainer(buffer, log, max_orgs_per_tick=2, batch_size=1)

    visited = []
    for _ in range(4):
        assert drainer.run_once() == DrainResult(drained=2, failed=0)
        visited.append(sorted(org for org, _, _ in log.take()))

    assert visited == [["org0", "org1"], ["org2", "org3"], ["org4", "org5"], ["org0", "org1"]]


def test_a_light_org_is_drained_within_one_rotation_however_many_orgs_are_ahead(
    buffer: MollifierBuffer,
) -> None:
    # Given 60 heavy orgs and a light one that sorts last, 5 orgs per tick
    for i in range(60):
        seed(buffer, f"heavy{i:02d}", "prod", 50)
    seed(buffer, "zz-light", "prod", 1)
    log = Log()
    drainer = MollifierDrainer(buffer, log, max_orgs_per_tick=5, batch_size=1)

    # When ticks run for one rotation (61 orgs / 5 per tick, rounded up)
    for _ in range(13):
        drainer.run_once()

    # Then the light org's message was drained (a window sliding one org per tick needs 57 ticks)
    assert "zz-light" in {org for org, _, _ in log.take()}


def test_every_env_of_an_org_with_more_envs_than_orgs_per_tick_is_drained(buffer: MollifierBuffer) -> None:
    envs = [f"env{i}" for i in range(6)]
    for env in envs:
        seed(buffer, "big", env, 20)
    for org in ("a", "b"):
        seed(buffer, org, "prod", 20)
    log = Log()
    drainer = MollifierDrainer(buffer, log, max_orgs_per_tick=2, batch_size=1)

    for _ in range(30):
        drainer.run_once()

    assert {env for org, env, _ in log.take() if org == "big"} == set(envs)


def test_an_org_with_many_envs_gets_the_share_of_an_org_with_one(buffer: MollifierBuffer) -> None:
    for env in range(20):
        seed(buffer, "many", f"env{env:02}", 20)
    seed(buffer, "single", "prod", 400)
    log = Log()
    drainer = MollifierDrainer(buffer, log, batch_size=5)

    for _ in range(20):
        drainer.run_once()

    share = Counter(org for org, _, _ in log.take())
    ratio = share["many"] / share["single"]
    assert 0.7 <= ratio <= 1.5, share


def test_envs_within_an_org_take_turns(buffer: MollifierBuffer) -> None:
    for env in ("a", "b", "c"):
        seed(buffer, "acme", env, 5)
    log = Log()
    drainer = MollifierDrainer(buffer, log, batch_size=2)

    order = []
    for _ in range(6):
        drainer.run_once()
        order.append({env for _, env, _ in log.take()})

    assert order == [{"a"}, {"b"}, {"c"}, {"a"}, {"b"}, {"c"}]


def test_light_orgs_are_not_starved_behind_a_heavy_one(buffer: MollifierBuffer) -> None:
    for env in range(5):
        seed(buffer, "heavy", f"env{env}", 200)
    for i in range(30):
        seed(buffer, f"light{i:02}", "prod", 3)
    log = Log()
    drainer = MollifierDrainer(buffer, log, batch_size=10, concurrency=8)

    handled: list[tuple[str, str, str]] = []
    while any(org != "heavy" for org in buffer.orgs()):
        drainer.run_once()
        handled.extend(log.take())

    heavy = sum(1 for org, _, _ in handled if org == "heavy")
    light = sum(1 for org, _, _ in handled if org != "heavy")
    assert light == 90
    # Three ticks at most: the heavy org drained 10 per tick meanwhile, out of its 1,000.
    assert heavy <= 30


def test_start_resets_the_cursors(buffer: MollifierBuffer) -> None:
    for org in ("a", "b", "c"):
        seed(buffer, org, "prod", 5)
    log = Log()
    drainer = MollifierDrainer(buffer, log, max_orgs_per_tick=1, batch_size=1)
    drainer.run_once()
    drainer.run_once()
    assert [org for org, _, _ in log.take()] == ["a", "b"]

    drainer.start()
    eventually(lambda: bool(log.entries), 5.0, "a tick after the restart")
    assert drainer.stop(5_000)

    # After a restart, rotation begins again at the first org.
    assert log.entries[0][0] == "a"


def test_cursor_state_stays_bounded_as_orgs_come_and_go(buffer: MollifierBuffer) -> None:
    log = Log()
    drainer = MollifierDrainer(buffer, log)
    drainer.rotation.max_env_cursors = 50

    for i, org in enumerate(orgs_of_one_group(buffer, 200, "org")):
        seed(buffer, org, f"env{i}", 1)
        assert drainer.run_once() == DrainResult(1, 0)
        assert drainer.rotation.cursor_count == min(i + 1, 50)

    assert drainer.run_once() == DrainResult(0, 0, empty=True)
    assert len(log.entries) == 200
