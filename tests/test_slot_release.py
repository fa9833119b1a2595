"""Budget slots given back: batched off the worker threads, and at once for audited copies."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.handler import make_drain_handler
from dramatiq_mollifier.drain.pace import DrainPace
from dramatiq_mollifier.drain.slot_release import SlotReleaser
from dramatiq_mollifier.models import STATE_DRAINED, marker

from .mollifier_helpers import add_mollifier, eventually

pytestmark = pytest.mark.redis


class CountingRelease:
    """The pace's release, counting its calls."""

    def __init__(self, pace: DrainPace) -> None:
        self.pace = pace
        self.calls = 0

    def __call__(self, message_ids: Sequence[str]) -> None:
        self.calls += 1
        self.pace.release(message_ids)


def held_slots(pace: DrainPace, count: int) -> list[str]:
    """``count`` slots bound to message ids, as a drainer leaves them before the broker write."""
    claim = pace.claim(count)
    ids = [f"m{i}" for i in range(claim.granted)]
    pace.bind(claim, ids)
    return ids


def test_starts_on_many_threads_free_their_slots_in_a_few_calls(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given 200 drained messages holding slots, started by 8 worker threads at once
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=200)
    ids = held_slots(pace, 200)
    release = CountingRelease(pace)
    releaser = SlotReleaser(release=release, flush_interval_ms=20)
    try:
        threads = [
            threading.Thread(target=lambda part=ids[i::8]: [releaser.add(m) for m in part]) for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        # Then every slot comes back, in far fewer Redis calls than messages
        eventually(lambda: pace.in_use() == 0, what="the slots to be freed")
        assert release.calls < 20
    finally:
        releaser.stop()


def test_adding_never_waits_for_redis(redis_client: redis.Redis, key_prefix: str) -> None:
    # Given a release stuck on a stalled Redis
    stalled, unblock = threading.Event(), threading.Event()
    freed: list[str] = []

    def release(message_ids: Sequence[str]) -> None:
        stalled.set()
        unblock.wait(10)
        freed.extend(message_ids)

    releaser = SlotReleaser(release=release, flush_interval_ms=1)
    releaser.add("first")
    eventually(stalled.is_set, what="the flush to start")

    # When worker threads start more drained messages, they hand the ids over and go on at once
    done = threading.Event()
    adder = threading.Thread(target=lambda: ([releaser.add(f"m{i}") for i in range(100)], done.set()))
    adder.start()
    assert done.wait(5)

    # And once Redis answers, every slot is freed
    unblock.set()
    eventually(lambda: len(freed) == 101, what="every slot to be freed")
    releaser.stop()


def test_stop_frees_what_is_pending(redis_client: redis.Redis, key_prefix: str) -> None:
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=10)
    ids = held_slots(pace, 10)
    releaser = SlotReleaser(release=pace.release, flush_interval_ms=60_000)
    for message_id in ids:
        releaser.add(message_id)

    releaser.stop()

    assert pace.in_use() == 0


@pytest.fixture
def broker(broker_url: str, key_prefix: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=broker_url, namespace=f"dq-{key_prefix}")
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


def test_a_worker_frees_the_slot_of_a_drained_message_it_starts(
    broker: RedisBroker, redis_client: redis.Redis, key_prefix: str
) -> None:
    # Given a Mollifier with a budget on a real RedisBroker and worker
    mollifier, _ = add_mollifier(broker, redis_client, key_prefix, drain_max_outstanding=10)
    started = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def ingest() -> None:
        started.set()

    # And a drained message on the broker holding a slot, and a message sent directly
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=10)
    claim = pace.claim(2)
    drained: dramatiq.Message[Any] = ingest.message()
    pace.bind(claim, [drained.message_id, "direct"])
    broker.enqueue(drained.copy(options=marker(STATE_DRAINED, drained.message_id)))
    pace.landed([drained.message_id, "direct"])
    assert pace.in_use() == 2

    # When a worker starts it
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        assert started.wait(10)
        # Then its slot comes back; nothing else does
        eventually(lambda: pace.in_use() == 1, what="the drained message's slot to be freed")
        assert redis_client.zrange(mollifier.buffer.keys.outstanding, 0, -1) == [b"direct"]
    finally:
        worker.stop()


def test_an_audited_dual_write_copy_frees_its_slot_at_once(
    redis_client: redis.Redis, key_prefix: str, broker: RedisBroker
) -> None:
    # Given entries written by a dual_write gate (the broker has the real copies) and by a divert one
    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def ingest() -> None: ...

    for mode, org in (("dual_write", "audited"), ("divert", "diverted")):
        writer = MollifierBuffer(redis_client, key_prefix=key_prefix, mode=mode)
        for _ in range(3):
            message: dramatiq.Message[Any] = ingest.message()
            writer.accept(message.message_id, org_id=org, env_id="prod", payload=message.encode())
    pace = DrainPace(redis_client, key_prefix=key_prefix, max_outstanding=100)
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    drainer = MollifierDrainer(buffer, make_drain_handler(broker), pace=pace)

    # When one tick drains both
    assert drainer.run_once().drained == 6

    # Then only the copies that went to the broker hold slots: an audit never reaches it, so no
    # worker would ever free its slot
    assert pace.in_use() == 3
    assert broker.client.llen(f"{broker.namespace}:{ingest.queue_name}") == 3
