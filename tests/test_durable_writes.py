"""``buffer_wait_replicas``: an accept fewer replicas acknowledged is a buffer failure (the gate
then fails open to the broker), and the entry it wrote stays: at-least-once, never lost.

Real Redis: the test servers (one server, or the cluster's primaries) have no replicas, so a wait
for one always falls short; the wait with a replica present is exercised by the failover test.
"""

from __future__ import annotations

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.errors import BufferUnavailableError


def test_an_accept_no_replica_acknowledged_fails_and_keeps_its_entry(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix, wait_replicas=1, wait_timeout_ms=20)

    with pytest.raises(BufferUnavailableError, match="buffer_wait_replicas"):
        buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")

    # The write itself happened before the wait: the entry is there to be drained (at-least-once).
    entry = buffer.get("m1")
    assert entry is not None
    assert entry.payload == b"x"


def test_without_a_wait_an_accept_on_the_same_server_succeeds(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
    assert buffer.depth() == 1


@pytest.mark.parametrize(("replicas", "timeout_ms"), [(-1, 10), (17, 10), (1, 0), (1, 10_001)])
def test_impossible_wait_settings_are_refused(
    redis_client: redis.Redis, key_prefix: str, replicas: int, timeout_ms: int
) -> None:
    with pytest.raises(ValueError, match="wait_replicas"):
        MollifierBuffer(
            redis_client, key_prefix=key_prefix, wait_replicas=replicas, wait_timeout_ms=timeout_ms
        )
