"""What one demo run leaves for the picture: depths over time, waits, and when the burst moved.

:class:`DepthSampler` reads the broker queue's depth (the RedisBroker list of the demo's queue)
and the buffer's depth every :data:`SAMPLE_EVERY_MS` while a run lasts; :class:`RunTrace` holds
those samples with the waits the actor recorded, so the with and without runs can be drawn side
by side.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from ..buffer import MollifierBuffer
from .app import DemoKeys, now_ms

__all__ = ["SAMPLE_EVERY_MS", "DepthSampler", "RunTrace", "Wait"]

#: How often the depths are read, in milliseconds.
SAMPLE_EVERY_MS = 100


@dataclass(frozen=True, slots=True)
class Wait:
    """One run of the actor: whose message, when it was sent, how long it waited to start."""

    tenant: str
    sent_at_ms: float
    wait_ms: float


@dataclass
class RunTrace:
    """One run (with or without the mollifier), as the picture draws it."""

    mollified: bool
    start_ms: float
    #: ``(at_ms, broker queue depth, buffer depth)``, one per sample.
    depths: list[tuple[float, int, int]] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    #: The burst's messages: when sent, and when each reached the broker (directly or drained).
    burst_sent_ms: list[float] = field(default_factory=list)
    burst_reached_ms: list[float] = field(default_factory=list)

    def quiet_waits_ms(self, burst: str) -> list[float]:
        """The waits of every tenant but ``burst``."""
        return [w.wait_ms for w in self.waits if w.tenant != burst]

    @staticmethod
    def waits_from(runs: Sequence[bytes | str]) -> list[Wait]:
        """The waits in the actor's JSON records (``[org, env, sent_at_ms, started_ms, drained]``)."""
        waits = []
        for raw in runs:
            org_id, env_id, sent_at_ms, started_ms, _ = json.loads(raw)
            waits.append(Wait(f"{org_id}/{env_id}", sent_at_ms, started_ms - sent_at_ms))
        return waits


class DepthSampler(threading.Thread):
    """Samples the broker queue's depth and the buffer's depth until :meth:`stop`."""

    def __init__(self, client: redis.Redis, buffer: MollifierBuffer, keys: DemoKeys) -> None:
        super().__init__(name="mollifier-demo-depths", daemon=True)
        self._client = client
        self._buffer = buffer
        self._queue_key = f"{keys.namespace}:{keys.queue}"
        self._stop_event = threading.Event()
        self.samples: list[tuple[float, int, int]] = []

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                queued = int(self._client.llen(self._queue_key))
                self.samples.append((now_ms(), queued, self._buffer.depth()))
            except redis.RedisError:
                pass  # a missing sample is not worth failing the demo over
            self._stop_event.wait(SAMPLE_EVERY_MS / 1000)

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop_event.set()
        self.join()
        return self.samples
