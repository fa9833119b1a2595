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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks import thread_cpu
from benchmarks.floor_drain import floor_send

REPO = Path(__file__).resolve().parent.parent
DRAMATIQ = str(Path(sys.executable).with_name("dramatiq"))
QUEUE_NAME = "smoothing"  # smoothing_app.QUEUE_NAME (not imported here: it builds a broker)
QUIET_ORGS = ("quiet-a", "quiet-b", "quiet-c")
BURST_ORG = "burst"
#: The burst's head, in ms from its first send (see ``Outcome.head_starts``).
HEAD_MS = 750


@dataclass
class Outcome:
    """What one run saw."""

    quiet_waits_ms: list[float]
    burst_completion_s: float
    peak_broker_depth: int
    peak_buffer_depth: int
    burst_processed: int
    #: Share of the samples taken while the buffer held work in which the broker queue was empty:
    #: a consumer that looked then found nothing to prefetch (and backed off). Work conservation
    #: means this stays near 0.
    starved_share: float = 0.0
    #: Mean broker-queue depth (RedisBroker) over the samples taken while the buffer held work.
    mean_broker_depth: float = 0.0
    #: CPU time the whole machine spent (every process: workers, producers, Redis, RabbitMQ, the
    #: rest) from the burst's first send to its last message's start, in seconds; 0 where
    #: ``/proc/stat`` is not there.
    machine_cpu_s: float = 0.0
    #: The machine's cores (what ``machine_cpu_s`` is a share of, per second).
    cores: int = 1
    #: CPU time the worker processes' threads spent over the same span, by role (Dramatiq's
    #: actor threads and consumers, each mollifier thread: ``benchmarks/thread_cpu.py``), in
    #: seconds.
    thread_cpu_s: dict[str, float] = field(default_factory=dict)
    #: Burst messages started in the burst's first ``HEAD_MS``: how fast the workers got going.
    #: Without the mollifier the producers fill the queue at once; with it the drain budget
    #: starts at its floor and must catch up with the workers.
    head_starts: int = 0

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
    separate_drainer: bool = False,
    producers: int | None = None,
    floor: bool = False,
) -> Outcome:
    """Start a worker, burst ``burst`` messages beside three quiet orgs at 10/s, and measure.

    ``producers``: processes that send the burst between them, each as fast as it can (default:
    one per worker process). One producer process sends about as fast as one worker process
    consumes on a small machine, so with two worker processes a single producer hardly builds a
    backlog at all, and "without the mollifier" would not be the scenario of a burst.

    ``separate_drainer``: the workers do not drain (``MOLLIFIER_DRAINER_ENABLED=false``); one
    ``dramatiq-mollifier drain`` process does, as a deployment with CPU-bound workers would.

    ``floor``: without the mollifier, the burst goes through ``floor_drain.py`` instead: what the
    cheapest buffer in Redis costs.
    """
    if floor and mollified:
        raise ValueError("the floor is a run without the mollifier")
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    if broker == "rabbitmq":
        _purge(broker_url or "", QUEUE_NAME)
    env = {
        **os.environ,
        "SMOOTHING_BROKER": broker,
        "SMOOTHING_BROKER_URL": broker_url or redis_url,
        "SMOOTHING_REDIS_URL": redis_url,
        "SMOOTHING_WORK_MS": str(work_ms),
        "SMOOTHING_FLOOR": "1" if floor else "0",
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
    worker = [DRAMATIQ, "benchmarks.smoothing_app", "--processes", str(processes), "--threads", str(threads)]
    commands = [worker]
    if separate_drainer and mollified:
        env["MOLLIFIER_DRAINER_ENABLED"] = "false"
        commands.append([sys.executable, "-m", "dramatiq_mollifier", "drain", "benchmarks.smoothing_app"])
    children = [
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        for command in commands
    ]
    try:
        # The producer in a process of its own: the app's Mollifier reads its settings at import.
        produced = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.smoothing_scenario",
                broker,
                str(burst),
                str(timeout_s),
                str(producers or processes),
                str(processes),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            check=True,
            timeout=timeout_s + 120,
        )
        return Outcome(**json.loads(produced.stdout.decode().strip().splitlines()[-1]))
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        out.close()


def _purge(amqp_url: str, queue_name: str) -> None:
    """Drop what an earlier run left on the RabbitMQ queue (quiet messages sent at its very end)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue_name, passive=True)
        channel.queue_purge(queue_name)
    except pika.exceptions.ChannelClosedByBroker:
        pass  # no such queue yet: nothing to drop
    finally:
        if connection.is_open:
            connection.close()


_OURS = {"MOLLIFIER_REDIS_URL", "MOLLIFIER_ENABLED", "MOLLIFIER_ENABLED_ORGS", "MOLLIFIER_DRAINER_ENABLED"}
# Drain settings pass through (MOLLIFIER_DRAIN_*): bench_smoothing.py --set lets one try other values.


class Sampler:
    """Samples the broker queue's depth, the buffer's depth and the drained messages waiting."""

    def __init__(
        self, client: redis.Redis, app_broker: Any, queue_name: str, *, broker: str, done: threading.Event
    ) -> None:
        self.client, self.app_broker, self.queue_name, self.broker, self.done = (
            client,
            app_broker,
            queue_name,
            broker,
            done,
        )
        self.peak_broker = self.peak_buffer = 0
        # While the buffer holds work: samples, those with no drained message waiting, depths.
        self.buffered_samples = self.starved_samples = self.broker_sum = 0

    def broker_depth(self) -> int:
        if self.broker == "redis":
            return int(self.client.llen(f"dramatiq:{self.queue_name}"))
        # RabbitMQ: the ready count of a passive declare (the broker's channels are per thread).
        return int(self.app_broker.get_queue_message_counts(self.queue_name)[0])

    def run(self) -> None:
        while not self.done.is_set():
            queue_depth = self.broker_depth()
            depth = int(self.client.hget("mollifier:depth", "total") or 0)
            self.peak_broker = max(self.peak_broker, queue_depth)
            self.peak_buffer = max(self.peak_buffer, depth)
            if depth > 0:
                self.buffered_samples += 1
                self.broker_sum += queue_depth
                # The queue empty: a consumer that looks now finds nothing and backs off.
                self.starved_samples += queue_depth == 0
            self.done.wait(0.05)


def machine_cpu_s() -> float:
    """CPU seconds every core of this machine has spent busy since boot (``/proc/stat``), or 0.

    Every process counts (the servers too): on a machine whose cores the run keeps busy, this,
    not the time, is what the mollifier's work adds to.
    """
    try:
        with open("/proc/stat") as stat:
            fields = [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user, nice, system, (idle, iowait), irq, softirq: not steal (the hypervisor's other guests)
    busy = sum(fields[:3]) + sum(fields[5:7])
    return busy / os.sysconf("SC_CLK_TCK")


def _send_share(count: int, go: Any) -> None:
    """A helper producer (a spawned process): send ``count`` burst messages once ``go`` is set."""
    from benchmarks import smoothing_app as app

    go.wait()
    for _ in range(count):
        _send_burst_message(app)


def _send_burst_message(app: Any) -> None:
    if app.FLOOR:
        message = app.work.message_with_options(args=(BURST_ORG, time.time() * 1000), org_id=BURST_ORG)
        floor_send(app.waits, message)
    else:
        app.work.send_with_options(args=(BURST_ORG, time.time() * 1000), org_id=BURST_ORG)


def _measure(
    client: redis.Redis, *, burst: int, broker: str, timeout_s: float, producers: int = 1, workers: int = 1
) -> Outcome:
    import multiprocessing

    from benchmarks import smoothing_app as app

    # Helper producers start (import the app, connect) before the clock does.
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    shares = [burst // producers + (1 if n < burst % producers else 0) for n in range(producers)]
    helpers_procs = [context.Process(target=_send_share, args=(share, go)) for share in shares[1:]]
    for process in helpers_procs:
        process.start()

    work = app.work
    waits_key = app.WAITS_KEY
    # Ready: one message goes through and every worker process has booted (its thread CPU
    # reporter wrote) before the clock starts. Waiting for the message alone started the burst
    # while a second worker process could still be importing the app.
    work.send_with_options(args=("warmup", time.time() * 1000), org_id="warmup")
    deadline = time.monotonic() + 60
    while client.llen(waits_key) < 1 or client.hlen(thread_cpu.KEY) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the warm-up message was not processed or fewer than {workers} worker processes booted"
            )
        time.sleep(0.05)
    client.delete(waits_key)

    done = threading.Event()
    sampler = Sampler(client, app.broker, app.QUEUE_NAME, broker=broker, done=done)

    def quiet() -> None:
        while not done.is_set():
            for org in QUIET_ORGS:
                work.send_with_options(args=(org, time.time() * 1000), org_id=org)
            done.wait(0.1)

    helpers = [threading.Thread(target=quiet, daemon=True), threading.Thread(target=sampler.run, daemon=True)]
    for thread in helpers:
        thread.start()
    started, cpu_at_start, threads_at_start = time.monotonic(), machine_cpu_s(), thread_cpu.read(client)
    head_ends_ms = time.time() * 1000 + HEAD_MS
    go.set()
    for _ in range(shares[0]):
        _send_burst_message(app)
    deadline = started + timeout_s
    burst_done = 0
    while burst_done < burst and time.monotonic() < deadline:
        time.sleep(0.02)
        burst_done = int(client.get(app.BURST_DONE_KEY) or 0)
    completion_s = time.monotonic() - started
    machine_cpu = machine_cpu_s() - cpu_at_start
    threads = {name: cpu - threads_at_start.get(name, 0.0) for name, cpu in thread_cpu.read(client).items()}
    done.set()
    for thread in helpers:
        thread.join()
    for process in helpers_procs:
        process.join(30)
    quiet_waits = []
    head_starts = 0
    for item in client.lrange(waits_key, 0, -1):
        org, wait_ms, started_ms = item.decode().split("|")
        if org in QUIET_ORGS:
            quiet_waits.append(float(wait_ms))
        elif org == BURST_ORG and float(started_ms) < head_ends_ms:
            head_starts += 1
    samples = max(1, sampler.buffered_samples)
    return Outcome(
        quiet_waits,
        completion_s,
        sampler.peak_broker,
        sampler.peak_buffer,
        burst_done,
        starved_share=sampler.starved_samples / samples,
        mean_broker_depth=sampler.broker_sum / samples,
        machine_cpu_s=machine_cpu,
        cores=os.cpu_count() or 1,
        thread_cpu_s=threads,
        head_starts=head_starts,
    )


if __name__ == "__main__":
    # The producer side of run_scenario: arguments broker, burst, timeout, producers, worker
    # processes; prints the outcome.
    outcome = _measure(
        redis.Redis.from_url(os.environ["SMOOTHING_REDIS_URL"]),
        burst=int(sys.argv[2]),
        broker=sys.argv[1],
        timeout_s=float(sys.argv[3]),
        producers=int(sys.argv[4]),
        workers=int(sys.argv[5]),
    )
    print(json.dumps(asdict(outcome)))
