"""The drainer's handler pool when its threads cannot do the work: every entry still comes back
to the tick, which would otherwise wait for it forever (pure policy: no server)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime, timezone

import pytest

from dramatiq_mollifier.drain.handler_pool import HandlerPool, NotStarted
from dramatiq_mollifier.models import BufferEntry, EntryStatus


def entries(n: int) -> list[BufferEntry]:
    now = datetime.now(timezone.utc)
    return [BufferEntry(f"m{i}", "o", "e", b"", EntryStatus.DRAINING, 0, now) for i in range(n)]


def test_entries_no_thread_can_run_come_back_untried(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a process that cannot start another thread
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    pool = HandlerPool(4, lambda entry: None, lambda completion: None)

    # When a batch is submitted (it raised, with the batch counted in flight: the tick then
    # waited for completions that never came)
    batch = entries(3)
    pool.submit(batch)

    # Then the batch comes back untried, to be given back
    assert pool.in_flight == 3
    done = pool.take(3)
    assert [entry for entry, _ in done] == batch
    assert all(isinstance(error, NotStarted) for _, error in done)


def test_a_batch_handler_that_miscounts_fails_its_chunk_instead_of_its_thread() -> None:
    # Given a batch handler that returns fewer results than entries
    class Miscounting:
        def __call__(self, entry: BufferEntry) -> None: ...

        def many(self, chunk: Sequence[BufferEntry]) -> list[BaseException | None]:
            return [None]

    pool = HandlerPool(2, Miscounting(), lambda completion: None)
    try:
        # When it runs a chunk (its thread died in zip(strict=True) and the tick waited forever)
        pool.submit(entries(3))
        done = pool.take(3)
    finally:
        pool.close()

    # Then every entry of the chunk failed, saying why
    assert len(done) == 3
    assert all(isinstance(error, TypeError) and "1 results for 3" in str(error) for _, error in done)
