"""One drain tick against a real server: ack, retries, dead letters, error isolation, reclaim."""

from __future__ import annotations

import threading

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.drainer import DrainResult, MollifierDrainer
from dramatiq_mollifier.errors import UndeliverableEntryError
from dramatiq_mollifier.models import BufferEntry, EntryStatus
from dramatiq_mollifier.telemetry import Telemetry

from .layout_helpers import group
from .mollifier_helpers import counts, data_points, metrics, total, wait_for_leases_to_expire


class Recorder:
    """A handler that records what it was given and raises what it is told to, per message id."""

    def __init__(self, errors: dict[str, BaseException] | None = None) -> None:
        self.errors = errors or {}
        self.seen: list[BufferEntry] = []
        self._lock = threading.Lock()

    def __call__(self, entry: BufferEntry) -> None:
        with self._lock:
            self.seen.append(entry)
        error = self.errors.get(entry.message_id)
        if error is not None:
            raise error

    @property
    def ids(self) -> list[str]:
        return [entry.message_id for entry in self.seen]


def drain_until_idle(drainer: MollifierDrainer, limit: int = 100) -> list[DrainResult]:
    results = []
    for _ in range(limit):
        result = drainer.run_once()
        if result[:3] == (0, 0, False):
            return results
        results.append(result)
    raise AssertionError(f"still draining after {limit} ticks: {results[-3:]}")


def test_a_tick_hands_each_entry_to_the_handler_and_acks_it(buffer: MollifierBuffer) -> None:
    for i in range(5):
        buffer.accept(f"m{i}", org_id="acme", env_id="prod", payload=f"p{i}".encode())
    handler = Recorder()

    result = MollifierDrainer(buffer, handler).run_once()

    assert result == DrainResult(drained=5, failed=0)
    assert sorted(handler.ids) == [f"m{i}" for i in range(5)]
    assert {e.payload for e in handler.seen} == {f"p{i}".encode() for i in range(5)}
    assert all(e.status is EntryStatus.DRAINING and e.attempts == 0 for e in handler.seen)
    assert buffer.depth() == 0
    assert buffer.get("m0") is None
    assert buffer.orgs() == []


def test_an_empty_buffer_makes_an_empty_tick(buffer: MollifierBuffer) -> None:
    handler = Recorder()

    assert MollifierDrainer(buffer, handler).run_once() == DrainResult(0, 0, empty=True)
    assert handler.seen == []


def test_a_failing_entry_is_retried_then_dead_lettered_with_the_class_name(buffer: MollifierBuffer) -> None:
    buffer.accept("bad", org_id="acme", env_id="prod", payload=b"x")
    buffer.accept("good", org_id="acme", env_id="prod", payload=b"y")
    handler = Recorder({"bad": ValueError("payload rejected")})
    drainer = MollifierDrainer(buffer, handler, max_attempts=3, retry_delay_ms=0)

    results = drain_until_idle(drainer)

    assert sum(r.drained for r in results) == 1
    assert sum(r.failed for r in results) == 3
    assert [e.attempts for e in handler.seen if e.message_id == "bad"] == [0, 1, 2]
    (dead,) = buffer.failed()
    assert dead.message_id == "bad"
    assert dead.last_error == ("ValueError", "payload rejected")
    assert dead.attempts == 2
    assert buffer.depth() == 0


def test_a_non_retryable_error_is_dead_lettered_at_once(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    handler = Recorder({"m1": KeyError("gone")})
    drainer = MollifierDrainer(
        buffer, handler, max_attempts=5, is_retryable=lambda exc: not isinstance(exc, KeyError)
    )

    assert drainer.run_once() == DrainResult(drained=0, failed=1)

    assert len(handler.seen) == 1
    (dead,) = buffer.failed()
    assert dead.last_error == ("KeyError", "'gone'")


def test_an_undeliverable_entry_is_dead_lettered_at_once_whatever_is_retryable(
    buffer: MollifierBuffer,
) -> None:
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"\xff garbage")
    handler = Recorder({"m1": UndeliverableEntryError("not a Dramatiq message")})
    drainer = MollifierDrainer(buffer, handler, max_attempts=5, is_retryable=lambda exc: True)

    assert drainer.run_once() == DrainResult(drained=0, failed=1)

    (dead,) = buffer.failed()
    assert dead.last_error == ("UndeliverableEntryError", "not a Dramatiq message")
    assert dead.payload == b"\xff garbage"


def test_a_broken_is_retryable_counts_as_retryable(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")

    def is_retryable(exc: BaseException) -> bool:
        raise RuntimeError("bug in the predicate")

    drainer = MollifierDrainer(
        buffer, Recorder({"m1": ValueError("no")}), is_retryable=is_retryable, retry_delay_ms=0
    )

    assert drainer.run_once() == DrainResult(0, 1)
    entry = buffer.get("m1")
    assert entry is not None
    assert (entry.status, entry.attempts) == (EntryStatus.QUEUED, 1)


def test_one_envs_pop_error_is_one_failure_and_the_other_envs_still_drain(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    for org in ("a", "b", "c"):
        buffer.accept(f"{org}1", org_id=org, env_id="prod", payload=b"x")
    # Corrupt b's queue: the pop's LRANGE answers WRONGTYPE for that env only.
    queue = buffer.keys.tenant("b", "prod").queue
    redis_client.delete(queue)
    redis_client.set(queue, "not a list")
    handler = Recorder()

    result = MollifierDrainer(buffer, handler).run_once()

    assert result == DrainResult(drained=2, failed=1)
    assert sorted(handler.ids) == ["a1", "c1"]


def test_one_orgs_unreadable_envs_are_one_failure_and_the_other_orgs_still_drain(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    for org in ("a", "b", "c"):
        buffer.accept(f"{org}1", org_id=org, env_id="prod", payload=b"x")
    # Corrupt b's set of envs: reading it answers WRONGTYPE for that org only.
    envs = buffer.keys.envs("b")
    redis_client.delete(envs)
    redis_client.set(envs, "not a set")
    handler = Recorder()

    result = MollifierDrainer(buffer, handler).run_once()

    assert result == DrainResult(drained=2, failed=1)
    assert sorted(handler.ids) == ["a1", "c1"]


def test_a_handler_that_raises_base_exception_does_not_lose_the_entry(buffer: MollifierBuffer) -> None:
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    handler = Recorder({"m1": SystemExit(3)})

    assert MollifierDrainer(buffer, handler, retry_delay_ms=0).run_once() == DrainResult(0, 1)

    entry = buffer.get("m1")
    assert entry is not None
    assert (entry.status, entry.attempts) == (EntryStatus.QUEUED, 1)


def test_batch_size_bounds_the_pops_per_env_per_tick(buffer: MollifierBuffer) -> None:
    for i in range(25):
        buffer.accept(f"m{i:02}", org_id="acme", env_id="prod", payload=b"x")
    handler = Recorder()
    drainer = MollifierDrainer(buffer, handler, batch_size=10, concurrency=3)

    assert [r.drained for r in drain_until_idle(drainer)] == [10, 10, 5]
    assert sorted(handler.ids) == [f"m{i:02}" for i in range(25)]


def test_an_expired_lease_is_reclaimed_by_run_once(redis_client: redis.Redis, key_prefix: str) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, lease_ms=200)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    # A drainer pops the entry, then dies before acking it.
    assert DrainProtocol(buffer).pop("acme", "prod") is not None
    provider, reader = metrics()
    handler = Recorder()
    drainer = MollifierDrainer(buffer, handler, telemetry=Telemetry(provider))
    assert drainer.reclaim_interval_ms == 50

    assert drainer.run_once() == DrainResult(0, 0, empty=True)  # the lease is still live
    wait_for_leases_to_expire(buffer)
    assert drainer.run_once() == DrainResult(drained=1, failed=0)

    assert handler.ids == ["m1"]
    assert buffer.depth() == 0
    assert total(reader, "mollifier.leases_reclaimed") == 1


def test_reclaim_is_throttled_to_the_reclaim_interval(
    buffer: MollifierBuffer, redis_client: redis.Redis
) -> None:
    drainer = MollifierDrainer(buffer, Recorder(), reclaim_interval_ms=60_000)
    assert drainer.run_once() == DrainResult(0, 0, empty=True)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    assert DrainProtocol(buffer).pop("acme", "prod") is not None
    # Force the lease into the past: only a reclaim can bring the entry back.
    redis_client.zadd(group(buffer, "acme").leases, {"m1": 0})

    assert drainer.run_once() == DrainResult(0, 0, empty=True)
    assert MollifierDrainer(buffer, Recorder()).run_once() == DrainResult(1, 0)


def test_drain_telemetry_counts_results_time_in_buffer_and_depth(buffer: MollifierBuffer) -> None:
    for i in range(3):
        buffer.accept(f"m{i}", org_id="acme", env_id="prod", payload=b"x")
    buffer.accept("dead", org_id="acme", env_id="prod", payload=b"x")
    provider, reader = metrics()
    handler = Recorder({"dead": RuntimeError("no")})
    drainer = MollifierDrainer(
        buffer, handler, max_attempts=2, telemetry=Telemetry(provider), retry_delay_ms=0
    )

    drain_until_idle(drainer)

    drained = counts(reader, "mollifier.drained", "result")
    assert drained == {("acked",): 3, ("requeued",): 1, ("failed",): 1}
    (histogram,) = [point for _, point in data_points(reader, "mollifier.time_in_buffer")]
    assert histogram.count == 3
    assert histogram.min >= 0
    (depth,) = [point for _, point in data_points(reader, "mollifier.buffer.depth")]
    assert depth.value == 4  # read once, at the start of the first tick


def test_the_drained_log_names_the_message_its_tenant_age_and_sha256(
    redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit line of a dual_write copy, at INFO: operators join it with mollifier.buffered."""
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, mode="dual_write")
    buffer.accept("m'1", org_id="acme", env_id="prod", payload=b"hello")
    caplog.set_level("INFO", logger="dramatiq_mollifier.drain")

    MollifierDrainer(buffer, Recorder()).run_once()

    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mollifier.drained")]
    assert "message_id=\"m'1\" org_id='acme' env_id='prod' attempts=0 age_ms=" in line
    assert line.endswith("sha256=2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")


def test_a_divert_entry_is_audited_at_debug_not_on_the_info_hot_path(
    buffer: MollifierBuffer, caplog: pytest.LogCaptureFixture
) -> None:
    """A burst drains message by message: its audit line is DEBUG, so INFO logs stay quiet."""
    for n in range(3):
        buffer.accept(f"m{n}", org_id="acme", env_id="prod", payload=b"hello")
    caplog.set_level("INFO", logger="dramatiq_mollifier.drain")

    MollifierDrainer(buffer, Recorder()).run_once()

    assert not [r for r in caplog.records if r.getMessage().startswith("mollifier.drained")]
    buffer.accept("m3", org_id="acme", env_id="prod", payload=b"hello")
    caplog.set_level("DEBUG", logger="dramatiq_mollifier.drain")
    MollifierDrainer(buffer, Recorder()).run_once()
    (record,) = [r for r in caplog.records if r.getMessage().startswith("mollifier.drained")]
    assert record.levelname == "DEBUG"
    assert "message_id='m3'" in record.getMessage() and "sha256=" in record.getMessage()
