"""``MollifierDrainer``: puts buffered messages back on the broker, fairly (stub; see issue 4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .buffer import MollifierBuffer
from .models import BufferEntry

__all__ = ["DrainHandler", "DrainResult", "MollifierDrainer"]

#: Called once per popped entry; raising means the attempt failed.
DrainHandler = Callable[[BufferEntry], None]


class DrainResult(NamedTuple):
    """What one tick did: entries acked, and failures (handler errors and per-env pop errors)."""

    drained: int
    failed: int


class MollifierDrainer:
    def __init__(
        self,
        buffer: MollifierBuffer,
        handler: DrainHandler,
        *,
        concurrency: int = 50,
        max_attempts: int = 3,
        max_orgs_per_tick: int = 500,
        poll_interval_ms: int = 100,
        batch_size: int = 100,
        is_retryable: Callable[[BaseException], bool] | None = None,
    ) -> None:
        raise NotImplementedError

    def run_once(self) -> DrainResult:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout_ms: int = 30_000) -> bool:
        raise NotImplementedError
