"""Runtime per-org flags on a real Redis: strict parsing, a cached view, effect without restart."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from redis.backoff import NoBackoff
from redis.retry import Retry

from dramatiq_mollifier import BufferUnavailableError
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.gate.flags import OrgFlags, OrgFlagsView, flags_key, parse_flag

from .fake_redis import FakeServer
from .mollifier_helpers import add_mollifier, decisions, eventually, fail_opens, fork_with_deadline


def unreachable_client() -> redis.Redis:
    """A client for a closed port that gives up at once (as the middleware's own client does)."""
    return redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def inline(refresh: Callable[[], None]) -> None:
    """Run a refresh in the caller's thread, so a fake clock alone decides when one happens."""
    refresh()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_enable_disable_remove_and_list(redis_client: redis.Redis, key_prefix: str) -> None:
    flags = OrgFlags(redis_client, key_prefix=key_prefix)

    flags.enable("acme")
    flags.enable("org:with{odd}chars and spaces")
    flags.disable("globex")

    assert flags.all() == {"acme": True, "org:with{odd}chars and spaces": True, "globex": False}
    assert flags.enrolled() == {"acme", "org:with{odd}chars and spaces"}
    assert flags.remove("acme") is True
    assert flags.remove("acme") is False
    assert flags.all() == {"org:with{odd}chars and spaces": True, "globex": False}
    assert redis_client.hget(flags_key(key_prefix), "globex") == b"false"


@pytest.mark.parametrize(
    "raw", ["false", "False", "FALSE", "True", "TRUE", "yes", "1", "", " true", "true\n"]
)
def test_only_the_exact_string_true_enrols(
    raw: str, redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.hset(flags_key(key_prefix), "acme", raw)
    flags = OrgFlags(redis_client, key_prefix=key_prefix)

    assert flags.all() == {"acme": False}
    assert flags.enrolled() == frozenset()
    assert ("Invalid mollifier flag" in caplog.text) is (raw != "false")


def test_parse_flag_is_strict() -> None:
    assert parse_flag(b"true") is True
    assert parse_flag("false") is False
    assert parse_flag(b"\xff") is None
    assert parse_flag("on") is None


def test_an_empty_org_id_is_refused(redis_client: redis.Redis, key_prefix: str) -> None:
    with pytest.raises(ValueError, match="org id"):
        OrgFlags(redis_client, key_prefix=key_prefix).enable("")


@pytest.mark.redis  # how redis-py meets a failing server: rerun with the oldest redis-py
def test_redis_errors_are_wrapped(key_prefix: str) -> None:
    flags = OrgFlags(unreachable_client(), key_prefix=key_prefix)

    with pytest.raises(BufferUnavailableError):
        flags.all()
    with pytest.raises(BufferUnavailableError):
        flags.enable("acme")


def test_the_view_reads_the_hash_at_most_once_per_interval(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    flags = OrgFlags(redis_client, key_prefix=key_prefix)
    reads: list[int] = []
    enrolled = flags.enrolled
    flags.enrolled = lambda: reads.append(1) or enrolled()  # type: ignore[method-assign]
    clock = FakeClock()
    view = OrgFlagsView(flags, refresh_ms=1_000, clock=clock, spawn=inline)

    assert not view.enrolled("acme")
    flags.enable("acme")
    for _ in range(100):
        assert not view.enrolled("acme")  # cached: the flip is not seen yet
    clock.now += 1.0
    assert view.enrolled("acme")

    assert len(reads) == 2


def test_a_failed_refresh_reads_as_not_enrolled_and_waits_a_full_interval(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    flags = OrgFlags(redis_client, key_prefix=key_prefix)
    flags.enable("acme")
    errors: list[Exception] = []
    clock = FakeClock()
    view = OrgFlagsView(flags, refresh_ms=1_000, on_error=errors.append, clock=clock, spawn=inline)
    assert view.enrolled("acme")

    def broken() -> frozenset[str]:
        raise BufferUnavailableError("down")

    flags.enrolled = broken  # type: ignore[method-assign]
    clock.now += 1.0
    for _ in range(10):
        assert not view.enrolled("acme")

    assert len(errors) == 1
    del flags.enrolled
    clock.now += 1.0
    assert view.enrolled("acme")


def test_an_operator_flip_takes_effect_without_a_restart(redis_client: redis.Redis, key_prefix: str) -> None:
    broker = StubBroker()
    mollifier, reader = add_mollifier(
        broker, redis_client, key_prefix, enabled_orgs=set(), trip_threshold=0, flag_refresh_ms=50
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    flags = OrgFlags(redis_client, key_prefix=key_prefix)
    ingest.send_with_options(org_id="globex")
    flags.enable("globex")
    # The refresh runs in the background: a send starts it and is answered from the copy it has.
    eventually(lambda: mollifier.flags.enrolled("globex"), what="the flip to be seen")
    ingest.send_with_options(org_id="globex")
    flags.disable("globex")
    eventually(lambda: not mollifier.flags.enrolled("globex"), what="the flip back to be seen")
    ingest.send_with_options(org_id="globex")

    assert broker.queues["default"].qsize() == 2
    assert mollifier.buffer.depth("globex") == 1
    assert decisions(reader) == {
        ("pass_through", "not_enrolled", False): 2,
        ("mollify", "per_env_rate", True): 1,
    }
    broker.close()


def test_a_static_enrolment_wins_over_a_runtime_false(redis_client: redis.Redis, key_prefix: str) -> None:
    broker = StubBroker()
    mollifier, _ = add_mollifier(broker, redis_client, key_prefix, trip_threshold=0, flag_refresh_ms=50)
    OrgFlags(redis_client, key_prefix=key_prefix).disable("acme")

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    ingest.send_with_options(org_id="acme")

    assert mollifier.buffer.depth("acme") == 1
    broker.close()


@pytest.mark.redis  # how redis-py meets a failing server: rerun with the oldest redis-py
def test_unreadable_flags_fail_open_and_are_counted(
    key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = StubBroker()
    _, reader = add_mollifier(
        broker, unreachable_client(), key_prefix, enabled_orgs=set(), trip_threshold=0, flag_refresh_ms=50
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    for _ in range(5):
        ingest.send_with_options(org_id="globex")

    assert broker.queues["default"].qsize() == 5
    assert decisions(reader) == {("pass_through", "not_enrolled", False): 5}
    eventually(lambda: fail_opens(reader) == {("flags",): 1}, what="the background refresh to fail")
    assert caplog.text.count("mollifier fail-open (flags)") == 1
    broker.close()


@pytest.mark.redis  # how redis-py meets a failing server: rerun with the oldest redis-py
def test_a_stalled_flags_redis_never_holds_up_a_send(silent_server: FakeServer, key_prefix: str) -> None:
    # Given flags on a Redis that accepts connections and never answers
    broker = StubBroker()
    # A long socket timeout, so that a send that waited on a read would stand far out of the
    # bound below whatever the machine's load (the default 500 ms was within 100 ms of it)
    client = MollifierBuffer.from_url(silent_server.url, socket_timeout=3).client
    _, reader = add_mollifier(
        broker, client, key_prefix, enabled_orgs=set(), trip_threshold=0, flag_refresh_ms=50
    )

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    # When an org that only a runtime flag could enrol sends for a while
    started = time.monotonic()
    for _ in range(200):
        ingest.send_with_options(org_id="globex")
    took = time.monotonic() - started

    # Then no send waited on the refresh (one read takes the 3 s socket timeout), and the
    # refreshes that failed in the background were counted
    assert took < 1.5, took
    assert broker.queues["default"].qsize() == 200
    assert decisions(reader) == {("pass_through", "not_enrolled", False): 200}
    eventually(lambda: fail_opens(reader)[("flags",)] >= 1, timeout_s=15, what="a refresh to time out")
    client.close()
    broker.close()


@pytest.mark.redis
def test_a_child_forked_during_a_refresh_refreshes_on_its_own(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a view whose refresh is under way in a thread (held here: the lock and the deadline
    # a refresh sets) when the process forks
    flags = OrgFlags(redis_client, key_prefix=key_prefix)
    flags.enable("globex")
    view = OrgFlagsView(flags, refresh_ms=60_000)
    assert view._lock.acquire(blocking=False)
    view._next_refresh_at = float("inf")

    pid = fork_with_deadline()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            deadline = time.monotonic() + 20
            while not view.enrolled("globex") and time.monotonic() < deadline:
                time.sleep(0.01)
            code = 0 if view.enrolled("globex") else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    view._lock.release()

    # Then the child read the flags itself instead of waiting for the parent's refresh forever
    assert os.waitstatus_to_exitcode(status) == 0
    assert not view.enrolled("globex")  # the parent's copy: its refresh never finished here
