"""One tenant bursts while three quiet ones send 10/s: how long do the quiet ones wait?

Measured where tenants feel it: from ``send()`` to the start of processing in a real ``dramatiq``
worker. Used by ``bench_smoothing.py`` (the figures) and by ``tests/test_smoothing_e2e.py`` (a
loose bound that fails when quiet tenants are not protected).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
DRAMATIQ = str(Path(sys.executable).with_name("dramatiq"))
QUIET_ORGS = ("quiet-a", "quiet-b", "quiet-c")
BURST_ORG = "burst"


@dataclass
class Outcome:
    """What one run saw."""

    quiet_waits_ms: list[float]
    burst_completion_s: float
    peak_broker_depth: int
    peak_buffer_depth: int
    burst_processed: int

    def quantile(self, q: float) -> float:
        waits = sorted(self.quiet_waits_ms)
        return waits[min(len(waits) - 1, int(q * len(waits)))] if waits else float("nan")

    @property
    def p50(self) -> float:
        return statistics.median(self.quiet_waits_ms) if self.quiet_waits_ms else float("nan")

    @property
    def p99(self) -> float:
        return self.quantile(0.99)


def run_scenario(
    *,
    redis_url: str,
    mollified: bool,
    burst: int = 10_000,
    processes: int = 1,
    threads: int = 8,
    work_ms: int = 5,
    broker: str = "redis",
    broker_url: str | None = None,
    log: Path | None = None,
    timeout_s: float = 300.0,
) -> Outcome:
    """Start a worker, burst ``burst`` messages beside three quiet orgs at 10/s, and measure."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = {
        **os.environ,
        "SMOOTHING_BROKER": broker,
        "SMOOTHING_BROKER_URL": broker_url or redis_url,
        "SMOOTHING_REDIS_URL": redis_url,
        "SMOOTHING_WORK_MS": str(work_ms),
        "MOLLIFIER_REDIS_URL": redis_url,
        "MOLLIFIER_ENABLED": "true" if mollified else "false",
        "MOLLIFIER_ENABLED_ORGS": "*",
        **{k: v for k, v in os.environ.items() if k.startswith("MOLLIFIER_DRAIN_")},
        "PYTHONPATH": str(REPO),
    }
    env = {
        k: v
        for k, v in env.items()
        if not (k.startswith("MOLLIFIER_") and k not in _OURS and not k.startswith("MOLLIFIER_DRAIN_"))
    }
    out = open(log or os.devnull, "ab")  # noqa: SIM115
    worker = subprocess.Popen(
        [DRAMATIQ, "benchmarks.smoothing_app", "--processes", str(processes), "--threads", str(threads)],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # The producer in a process of its own: the app's Mollifier reads its settings at import.
        produced = subprocess.run(
            [sys.executable, "-m", "benchmarks.smoothing_scenario", broker, str(burst), str(timeout_s)],
            cwd=REPO,
            env=env,
            capture_output=True,
            check=True,
            timeout=timeout_s + 120,
        )
        return Outcome(**json.loads(produced.stdout.decode().strip().splitlines()[-1]))
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        out.close()


_OURS = {"MOLLIFIER_REDIS_URL", "MOLLIFIER_ENABLED", "MOLLIFIER_ENABLED_ORGS"}
# Drain settings pass through: bench_smoothing.py --set lets one try other values.


def _measure(client: redis.Redis, *, burst: int, broker: str, timeout_s: float) -> Outcome:
    from benchmarks import smoothing_app as app

    work = app.work
    waits_key = app.WAITS_KEY
    # Ready: one message goes through before the clock starts.
    work.send_with_options(args=("warmup", time.time() * 1000), org_id="warmup")
    deadline = time.monotonic() + 60
    while client.llen(waits_key) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker never processed the warm-up message")
        time.sleep(0.05)
    client.delete(waits_key)

    done = threading.Event()
    peaks = {"broker": 0, "buffer": 0}
    queue_key = f"dramatiq:{app.QUEUE_NAME}"

    def quiet() -> None:
        while not done.is_set():
            for org in QUIET_ORGS:
                work.send_with_options(args=(org, time.time() * 1000), org_id=org)
            done.wait(0.1)

    def sample() -> None:
        while not done.is_set():
            if broker == "redis":
                peaks["broker"] = max(peaks["broker"], int(client.llen(queue_key)))
            depth = client.hget("mollifier:depth", "total")
            peaks["buffer"] = max(peaks["buffer"], int(depth or 0))
            done.wait(0.05)

    helpers = [threading.Thread(target=quiet, daemon=True), threading.Thread(target=sample, daemon=True)]
    for thread in helpers:
        thread.start()
    started = time.monotonic()
    for _ in range(burst):
        work.send_with_options(args=(BURST_ORG, time.time() * 1000), org_id=BURST_ORG)
    deadline = started + timeout_s
    burst_done = 0
    while burst_done < burst and time.monotonic() < deadline:
        time.sleep(0.02)
        burst_done = int(client.get(app.BURST_DONE_KEY) or 0)
    completion_s = time.monotonic() - started
    done.set()
    for thread in helpers:
        thread.join()
    quiet_waits = []
    for item in client.lrange(waits_key, 0, -1):
        org, wait_ms, _ = item.decode().split("|")
        if org in QUIET_ORGS:
            quiet_waits.append(float(wait_ms))
    return Outcome(quiet_waits, completion_s, peaks["broker"], peaks["buffer"], burst_done)


if __name__ == "__main__":
    # The producer side of run_scenario: arguments broker, burst, timeout; prints the outcome.
    outcome = _measure(
        redis.Redis.from_url(os.environ["SMOOTHING_REDIS_URL"]),
        burst=int(sys.argv[2]),
        broker=sys.argv[1],
        timeout_s=float(sys.argv[3]),
    )
    print(json.dumps(asdict(outcome)))
