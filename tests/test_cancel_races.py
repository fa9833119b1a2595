"""An operator's cancel of a whole env while a drainer works on it: nothing buffered survives,
and the drainer lets go of what was cancelled under it. Real Redis; the drainer's moves are made
at the exact moment by wrapping the controls' reads."""

from __future__ import annotations

from typing import Any

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.errors import EntryCancelled
from dramatiq_mollifier.models import BufferEntry


def test_a_drainer_taking_the_head_during_a_cancel_does_not_shift_entries_past_it(
    buffer: MollifierBuffer,
) -> None:
    # Given an env of 600 entries, more than one page of the cancel's reads
    for n in range(600):
        assert buffer.accept(f"m{n}", org_id="acme", env_id="prod", payload=b"x")
    drain = DrainProtocol(buffer)
    controls = buffer.controls
    real_lrange = controls.client.lrange
    reads: list[int] = []

    def lrange(name: Any, start: int, end: int) -> Any:
        page = real_lrange(name, start, end)
        if not reads:  # a drainer delivers the 3 head entries between the read and the cancels
            assert drain.ack_entries(drain.pop_many("acme", "prod", 3)).removed == 3
        reads.append(start)
        return page

    controls.client.lrange = lrange  # type: ignore[method-assign]
    try:
        # When the env is cancelled
        cancelled = controls.cancel_tenant("acme", "prod")
    finally:
        del controls.client.lrange

    # Then every entry the drainer did not deliver is cancelled (3 were left queued)
    assert cancelled == 597
    assert buffer.depth("acme", "prod") == 0


def test_an_entry_put_back_between_the_queue_and_the_leases_is_cancelled_too(buffer: MollifierBuffer) -> None:
    # Given an env with an entry in a drainer's hands
    for n in range(3):
        assert buffer.accept(f"m{n}", org_id="acme", env_id="prod", payload=b"x")
    drain = DrainProtocol(buffer)
    (in_flight,) = drain.pop_many("acme", "prod", 1)
    controls = buffer.controls
    real_zrange = controls.client.zrange
    failed: list[str] = []

    def zrange(*args: Any, **kwargs: Any) -> Any:
        if not failed:  # its handler fails after the queue was read: it goes back to the queue
            assert drain.requeue("m0", org_id="acme", env_id="prod", owner=in_flight.lease_owner)
            failed.append("m0")
        return real_zrange(*args, **kwargs)

    controls.client.zrange = zrange  # type: ignore[method-assign]
    try:
        # When the env is cancelled
        cancelled = controls.cancel_tenant("acme", "prod")
    finally:
        del controls.client.zrange

    # Then that entry is cancelled as well (it was in neither read, and was delivered later)
    assert cancelled == 3
    assert buffer.depth("acme", "prod") == 0


def test_the_drainer_stops_renewing_what_was_cancelled_under_it(buffer: MollifierBuffer) -> None:
    # Given an entry cancelled while its handler runs
    assert buffer.accept("c1", org_id="acme", env_id="prod", payload=b"x")
    assert buffer.accept("ok1", org_id="acme", env_id="prod", payload=b"x")

    def handler(entry: BufferEntry) -> None:
        if entry.message_id == "c1":
            assert buffer.controls.cancel(["c1"]) == 1
            raise EntryCancelled("cancelled")

    drainer = MollifierDrainer(buffer, handler, idle_wait_ms=0, concurrency=1)
    try:
        # When the drainer settles it
        assert drainer.run_once().drained == 1
        # Then it holds no lease for it (renewed for ten leases, then logged as a hung handler)
        assert buffer.depth() == 0
        assert len(drainer._leases) == 0
    finally:
        drainer.stop()
