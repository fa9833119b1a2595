"""Where the worker processes' CPU goes, by thread: the smoothing benchmark's view of what the
mollifier costs inside the workers (issue 10).

In each worker process of the smoothing app, :class:`ThreadCpuReporter` starts a thread at
worker boot that writes, every :data:`INTERVAL_S`, the CPU time every thread has used so far,
summed by :func:`role`, into one Redis hash (a field per process). The scenario reads the hash
when the burst starts and when its last message starts: the difference is each role's CPU during
the burst, to within one interval at each end. A drain process of its own
(``--separate-drainer``) is not a worker and is not counted.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from typing import Any

import dramatiq
import redis

__all__ = ["INTERVAL_S", "KEY", "ThreadCpuReporter", "read", "role"]

#: The hash the reporters write to: a field per worker process, each a JSON object of role -> s.
KEY = "smoothing:thread-cpu"
#: How often each worker process writes its threads' CPU, in seconds.
INTERVAL_S = 0.05


def role(thread: threading.Thread) -> str:
    """What a thread does: Dramatiq's actor threads and consumers, each mollifier thread (and the
    floor's, ``floor_drain.py``) by its name (numbered pool threads together), the main thread,
    anything else."""
    kind = type(thread).__name__.lstrip("_")
    if kind == "WorkerThread":
        return "dramatiq actor threads"
    if kind == "ConsumerThread":
        return "dramatiq consumers"
    if thread.name.startswith(("mollifier-", "floor-")):
        return re.sub(r"[_-]\d+$", "", thread.name)
    return "main" if thread is threading.main_thread() else "other"


class ThreadCpuReporter(dramatiq.Middleware):
    """Reports this worker process's CPU by thread role into :data:`KEY` on ``client``'s server.

    It defines no enqueue hook, so the drainer's move inside Redis stays on (see
    ``dramatiq_mollifier/drain/redis_move.py``).
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        threading.Thread(target=self._run, name="smoothing-thread-cpu", daemon=True).start()

    def _run(self) -> None:
        # A thread that ended keeps its last reading (until another thread gets its id).
        spent: dict[int, tuple[str, float]] = {}
        while True:
            for thread in threading.enumerate():
                try:
                    cpu = time.clock_gettime(time.pthread_getcpuclockid(thread.ident or 0))
                except OSError:  # it ended meanwhile
                    continue
                spent[thread.ident or 0] = (role(thread), cpu)
            totals: Counter[str] = Counter()
            for name, cpu in spent.values():
                totals[name] += cpu
            try:
                self._client.hset(KEY, str(os.getpid()), json.dumps(totals))
            except redis.RedisError:  # the run's server is gone: the run is over
                return
            time.sleep(INTERVAL_S)


def read(client: redis.Redis) -> dict[str, float]:
    """Every worker process's CPU so far, summed by role, in seconds."""
    totals: Counter[str] = Counter()
    raw: dict[Any, Any] = client.hgetall(KEY)  # type: ignore[assignment]
    for value in raw.values():
        totals.update(json.loads(value))
    return dict(totals)
