"""The fused trip-and-accept script leaves Redis exactly as evaluate_trip then accept do. Real Redis."""

from __future__ import annotations

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.models import TripDecision


def snapshot(client: redis.Redis, prefix: str) -> dict[str, tuple[str, object, bool]]:
    """Every key under ``prefix``: its type, its value and whether it expires (times left out)."""
    state: dict[str, tuple[str, object, bool]] = {}
    for key in client.scan_iter(match=f"{prefix}:*"):
        kind = client.type(key).decode()
        value: object
        if kind == "hash":
            value = {k: v for k, v in client.hgetall(key).items() if k != b"created_at_ms"}
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif key.endswith(b":index:depth"):
            value = client.zrange(key, 0, -1, withscores=True)  # scores are depths
        elif kind == "zset":
            # Scores are deadlines, or accept times (index:oldest): the members, in any order.
            value = sorted(client.zrange(key, 0, -1))
        else:
            value = None if b":trip:hold:" in key else client.get(key)  # the hold's deadline
        state[key.decode()[len(prefix) :]] = (kind, value, client.pttl(key) > 0)
    return state


@pytest.mark.parametrize(
    ("threshold", "hold_ms", "entry_ttl_s"), [(2, 10_000, None), (0, 10_000, 30), (1, 0, None)]
)
def test_the_fused_script_leaves_what_evaluate_trip_then_accept_leave(
    redis_client: redis.Redis, key_prefix: str, threshold: int, hold_ms: int, entry_ttl_s: int | None
) -> None:
    # The hot scripts spell their steps out instead of sharing helpers: this keeps them in step
    separate = MollifierBuffer(redis_client, key_prefix=f"{key_prefix}-a", entry_ttl_s=entry_ttl_s)
    fused = MollifierBuffer(redis_client, key_prefix=f"{key_prefix}-b", entry_ttl_s=entry_ttl_s)
    options = {"window_ms": 10_000, "threshold": threshold, "hold_ms": hold_ms}
    sends = [("o", "e", "m0"), ("o", "e", "m1"), ("o", "e", "m2"), ("o", "e", "m2"), ("o", "e", "m3")]
    sends += [("o:1", "x", "n0"), ("o", "1:x", "n1"), ("p", "e", "m0")]

    # Then the window resets while the hold lives: tripped below the threshold
    sends += [("window-reset", "", ""), ("o", "e", "m4"), ("o", "e", "m5"), ("o", "e", "m6")]

    replies_separate = []
    replies_fused = []
    for org, env, message_id in sends:
        if org == "window-reset":
            for buffer in (separate, fused):
                redis_client.delete(buffer.keys.tenant("o", "e").trip_counter)
            continue
        decision = separate.evaluate_trip(org, env, **options)
        # Sticky: an env with entries buffered diverts whatever its count.
        if not decision.tripped and separate.depth(org, env) > 0:
            decision = TripDecision(True, decision.count)
        accepted = decision.tripped and separate.accept(message_id, org_id=org, env_id=env, payload=b"p")
        replies_separate.append((decision, accepted))
        replies_fused.append(
            fused.evaluate_trip_and_accept(message_id, org_id=org, env_id=env, payload=b"p", **options)
        )

    assert replies_fused == replies_separate
    assert snapshot(redis_client, f"{key_prefix}-b") == snapshot(redis_client, f"{key_prefix}-a")
    assert fused.tripped() == separate.tripped()
    assert [fused.depth(), fused.depth("o"), fused.depth("o", "e")] == [
        separate.depth(),
        separate.depth("o"),
        separate.depth("o", "e"),
    ]
