"""Drained messages moved inside Redis: payloads and keys that a careless move would stall on or
lose messages over, and the buffer's counters and indexes left as the pop and its ack leave them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier import Mollifier
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.pace import DrainPace
from dramatiq_mollifier.drain.redis_move import redis_move_for
from dramatiq_mollifier.settings import MAX_IN_FLIGHT, MollifierMode, MollifierSettings

from . import test_drain_redis_move as moving
from .test_drain_redis_move import CountingHandler, buffered, declare, drainer_for, in_broker

pytestmark = pytest.mark.redis

# The fixtures of the move's main tests: a RedisBroker and a buffer on one database.
broker = moving.broker
shared = moving.shared


def test_a_long_run_of_digits_in_a_payload_moves_without_stalling_redis(
    broker_url: str, broker: RedisBroker, key_prefix: str
) -> None:
    # Given a message whose args hold a long run of digits (40 KB: a numeric string, say), on a
    # buffer whose client gives up on a reply after 1 s. Finding the timestamp's digits by an
    # unanchored pattern tried every digit of the run as a start, each scanning the run: the
    # move kept the whole server busy for about 10 s, and the drainer saw a failure.
    client = redis.Redis.from_url(broker_url, socket_timeout=1)
    try:
        buffer = MollifierBuffer(client, key_prefix=key_prefix)
        ids = buffered(buffer, declare(broker), "7" * 40_000)
        handler = CountingHandler(broker)
        drainer, _, _ = drainer_for(buffer, broker, handler, key_prefix)

        # When it drains
        result = drainer.run_once()
    finally:
        client.close()

    # Then the message moved, intact, in one call well within the client's timeout
    assert result.drained == 1 and result.failed == 0 and handler.entries == []
    [message] = in_broker(broker)
    assert message["message_id"] == ids[0] and message["args"] == ["7" * 40_000]


@pytest.mark.parametrize(
    "broken", ["heartbeats-of-another-type", "garbled-entry-counters", "entry-without-payload"]
)
def test_a_write_that_would_fail_half_way_moves_nothing_it_cannot_finish(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str, broken: str
) -> None:
    # Given three buffered messages and a key the move writes late that would make it fail after
    # it removed entries (Redis does not roll a script's writes back): the broker's heartbeats
    # of another type, or the second entry's counters garbled
    ids = buffered(shared, declare(broker), "a", "b", "c")
    if broken == "heartbeats-of-another-type":
        shared.client.set(f"{broker.namespace}:__heartbeats__", "not a sorted set")
    elif broken == "garbled-entry-counters":
        shared.client.hset(shared.keys.tenant("acme", "prod").space.entry(ids[1]), "attempts", "x")
    else:
        shared.client.hdel(shared.keys.tenant("acme", "prod").space.entry(ids[1]), "payload")
    handler = CountingHandler(broker)
    drainer, _, _ = drainer_for(shared, broker, handler, key_prefix)

    # When it drains
    drainer.run_once()

    # Then every message is either still buffered or on the broker's queue: none was taken from
    # the buffer and left in the queue's hash without its id on the queue's list
    client = broker.client
    listed = {i.decode() for i in client.lrange(f"{broker.namespace}:drained", 0, -1)}
    stored = {i.decode() for i in client.hkeys(f"{broker.namespace}:drained.msgs")}
    assert stored == listed
    on_broker = {json.loads(client.hget(f"{broker.namespace}:drained.msgs", i))["message_id"] for i in listed}
    buffered_ids = [i for i in ids if shared.client.exists(shared.keys.tenant("acme", "prod").space.entry(i))]
    for message_id in ids:
        assert (message_id in on_broker) != (message_id in buffered_ids), message_id
    assert shared.depth("acme", "prod") == len(buffered_ids)
    if broken != "heartbeats-of-another-type":  # the one before moved; the garbled one is the pop's
        assert ids[0] in on_broker and ids[1] in buffered_ids


def buffer_state(buffer: MollifierBuffer) -> dict[str, Any]:
    """The buffer's queues, sets, depth counters and listing indexes (an env's oldest score as
    whether it is its queue head's created_at_ms), without the leases' records."""
    client, space = buffer.client, buffer.keys.tenant("acme", "prod").space
    state: dict[str, Any] = {
        "depth": {f: v for f, v in client.hgetall(space.depth).items() if not f.startswith(b"lease:")},
        "orgs": client.zrange(space.orgs, 0, -1, withscores=True),
        "index": [client.zrange(key, 0, -1, withscores=True) for key in space.index_keys[:2]],
    }
    for env in ("prod", "dev"):
        tenant = buffer.keys.tenant("acme", env)
        state[env] = client.lrange(tenant.queue, 0, -1), client.smembers(tenant.envs)
        head = client.lindex(tenant.queue, 0)
        created = head and client.hget(space.entry(head.decode()), "created_at_ms")
        score = client.zscore(space.index_keys[2], f"acme\0\0{env}")
        state[f"oldest {env}"] = score if score is None or not created else score == float(created)
    return state


@pytest.mark.parametrize("limit", [2, 10])
def test_the_move_leaves_the_buffer_as_a_pop_and_its_ack_would(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str, limit: int
) -> None:
    # Given the same entries in two buffers, two of them references left by expired entries
    # (still counted), and another env of the same org
    actor = declare(broker)
    messages = [actor.message_with_options(args=(str(n),)) for n in range(7)]
    buffers = [MollifierBuffer(shared.client, key_prefix=f"{key_prefix}-{path}") for path in ("move", "pop")]
    for buffer in buffers:
        for n, message in enumerate(messages):
            env = "dev" if n == 6 else "prod"
            buffer.accept(message.message_id, org_id="acme", env_id=env, payload=message.encode())
        for n in (0, 3):
            buffer.client.delete(buffer.keys.tenant("acme", "prod").space.entry(messages[n].message_id))

    # When one moves a chunk and the other pops and acks as many entries
    pace = DrainPace(shared.client, key_prefix=f"{key_prefix}-move", max_outstanding=100)
    move = redis_move_for(broker, DrainProtocol(buffers[0]), pace, mode=MollifierMode.DIVERT, middleware=None)
    assert move is not None
    moved = move.move("acme", "prod", limit, pace.claim(limit))
    popping = DrainProtocol(buffers[1])
    popped = popping.pop_many("acme", "prod", moved.size)
    assert popping.ack_entries(popped).refused == []

    # Then both took the same entries and left the same queues, counters and indexes; the moved
    # ones count against the budget, in the broker, and the claim's placeholders are gone
    assert [e.message_id for e in moved.entries] == [e.message_id for e in popped]
    assert moved.size == min(limit, 4)
    assert buffer_state(buffers[0]) == buffer_state(buffers[1])
    outstanding, on_the_way = pace.keys
    assert {i.decode() for i in shared.client.zrange(outstanding, 0, -1)} == {e.message_id for e in popped}
    assert shared.client.zcard(on_the_way) == 0


@pytest.mark.parametrize("moves", [True, False], ids=["moved", "popped"])
def test_a_chunk_of_the_largest_size_allowed_drains_through_every_budget_script(
    shared: MollifierBuffer, broker: RedisBroker, key_prefix: str, moves: bool
) -> None:
    # Given as many buffered messages as a drainer may hold in flight, and a budget for all of
    # them: each chunk's slots and ids go to the claim, bind, landed and move scripts as one
    # command's arguments (at 4,000 Lua's unpack() failed every claim: nothing ever drained)
    ids = buffered(shared, declare(broker), *(str(i) for i in range(MAX_IN_FLIGHT)))
    handler = CountingHandler(broker)
    pace = DrainPace(shared.client, key_prefix=key_prefix, max_outstanding=2 * MAX_IN_FLIGHT)
    mollifier = next(m for m in broker.middleware if isinstance(m, Mollifier))
    move = redis_move_for(
        broker, DrainProtocol(shared), pace, mode=MollifierMode.DIVERT, middleware=mollifier
    )
    drainer = MollifierDrainer(
        shared,
        handler,
        pace=pace,
        move=move if moves else None,
        max_in_flight=MAX_IN_FLIGHT,
        batch_size=MAX_IN_FLIGHT,
    )

    # When it drains once
    result = drainer.run_once()

    # Then every message is on the broker once (in order when moved; the handler threads write
    # their parts of a pop side by side), each counted against the budget
    assert result.failed == 0 and result.drained == MAX_IN_FLIGHT
    written = [m["message_id"] for m in in_broker(broker)]
    assert written == ids if moves else sorted(written) == sorted(ids)
    assert (handler.entries == []) is moves
    assert shared.client.zcard(pace.keys[0]) == MAX_IN_FLIGHT and shared.client.zcard(pace.keys[1]) == 0


def test_settings_and_the_drainer_refuse_more_in_flight_than_a_script_call_takes(
    shared: MollifierBuffer,
) -> None:
    with pytest.raises(ValueError, match="drain_max_in_flight"):
        MollifierSettings(drain_max_in_flight=MAX_IN_FLIGHT + 1)
    with pytest.raises(ValueError, match="max_in_flight must be at most"):
        MollifierDrainer(shared, lambda entry: None, max_in_flight=MAX_IN_FLIGHT + 1)
