"""Fairness and scale of the drain rotation.

1. One org holds 100,000 buffered messages over 20 envs; 200 orgs hold 10 each. At what fraction
   of the heavy org's drain is the last light message drained? Target: within the first 1%.
   Run with the default window (500 orgs per tick) and with a window smaller than the org count.
2. A tick's cost with 100 and with 10,000 buffered orgs, ``max_orgs_per_tick`` fixed at 100.
   Target: it depends on the orgs a tick picks, not on how many are buffered.
3. The paced drain (the default budget, a thread starting drained messages at ``--consume``/s
   as a fleet's workers would) of the same 20,000 messages held by 20 orgs and by 2,000 orgs,
   interleaved rounds. Target: many small backlogs drain at least 0.8x as fast as a few large
   ones (each tick used to end after one org: 0.2x).

    python benchmarks/bench_fairness.py [--heavy 100000] [--consume 2000] [--rounds 3]

Starts its own Redis-compatible server. The handler only counts (fairness is about order).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.scripts import run_pipelined, script_source
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.pace import pace_for
from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary
from dramatiq_mollifier.models import BufferEntry
from dramatiq_mollifier.settings import MollifierSettings

PAYLOAD = b'{"queue_name":"default","actor_name":"ingest","args":[1],"kwargs":{},"options":{}}'


def seed(buffer: MollifierBuffer, tenants: list[tuple[str, str, int]], chunk: int = 2_000) -> float:
    """Accept ``count`` entries for each (org, env, count), pipelined; seconds taken.

    Runs ``lua/accept.lua`` by its documented KEYS/ARGV, ``chunk`` calls per round trip.
    """
    accept = buffer.client.register_script(script_source("accept"))
    keys = buffer.keys
    calls: list[tuple[list[str], list[str | int]]] = []
    for org, env, count in tenants:
        t = keys.tenant(org, env)
        for n in range(count):
            message_id = f"{org}/{env}/{n}"
            calls.append(
                (
                    [keys.entry(message_id), *(k.decode() for k in t.accept_keys)],
                    [message_id, org, env, PAYLOAD, 0, "divert"],
                )
            )
    began = time.perf_counter()
    for start in range(0, len(calls), chunk):
        assert all(reply == 1 for reply in run_pipelined(buffer.client, accept, calls[start : start + chunk]))
    return time.perf_counter() - began


class Order:
    """Counts heavy entries handled, and how many had been when each light entry was."""

    def __init__(self) -> None:
        self.heavy = 0
        self.heavy_at_last_light = 0
        self.light = 0
        self.last_light_at = 0.0
        self._lock = threading.Lock()

    def __call__(self, entry: BufferEntry) -> None:
        with self._lock:
            if entry.org_id == "heavy":
                self.heavy += 1
            else:
                self.light += 1
                self.heavy_at_last_light = self.heavy
                self.last_light_at = time.perf_counter()


def fairness(buffer: MollifierBuffer, heavy: int, window: int) -> None:
    buffer.client.flushdb()
    envs = 20
    tenants = [("heavy", f"env{e:02}", heavy // envs) for e in range(envs)]
    tenants += [(f"light{o:03}", "prod", 10) for o in range(200)]
    seconds = seed(buffer, tenants)
    light_total = 200 * 10
    print(f"  seeded {heavy + light_total:,} entries in {seconds:.1f} s")
    order = Order()
    drainer = MollifierDrainer(buffer, order, max_orgs_per_tick=window)
    began = time.perf_counter()
    ticks = 0
    while drainer.run_once().drained:
        ticks += 1
    elapsed = time.perf_counter() - began
    assert order.light == light_total and order.heavy == heavy, (order.light, order.heavy)
    share = order.heavy_at_last_light / heavy
    when = (order.last_light_at - began) / elapsed
    verdict = "meets" if share <= 0.01 else "misses"
    print(
        f"  window {window}: last light message drained after {order.heavy_at_last_light:,} heavy ones "
        f"= {share:.2%} of the heavy org's drain ({verdict} the 1% target); "
        f"{when:.2%} into the {elapsed:.1f} s drain, {ticks} ticks"
    )


def tick_cost(buffer: MollifierBuffer, orgs: int, window: int = 100, ticks: int = 15) -> float:
    buffer.client.flushdb()
    seed(buffer, [(f"org{o:05}", "prod", ticks + 1) for o in range(orgs)])
    drainer = MollifierDrainer(buffer, lambda entry: None, max_orgs_per_tick=window, batch_size=1)
    drainer.run_once()  # warm up the scripts and the handler pool
    costs = []
    for _ in range(ticks):
        began = time.perf_counter()
        drained = drainer.run_once().drained
        costs.append(time.perf_counter() - began)
        assert drained == window, drained
    return statistics.median(costs) * 1000


class Workers:
    """The fleet's workers as the pace sees them: each drained message is started (its slot
    freed) in the order written, at most ``rate`` per second, in batches every 10 ms."""

    def __init__(self, buffer: MollifierBuffer, rate: int) -> None:
        self.pace = pace_for(MollifierSettings(key_prefix="bench"), buffer.client)
        self.written: list[str] = []
        self.started = 0
        self._rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def __call__(self, entry: BufferEntry) -> None:
        self.written.append(entry.message_id)  # list.append is atomic

    def _run(self) -> None:
        assert self.pace is not None
        began = time.perf_counter()
        while not self._stop.wait(0.01):
            allowed = int((time.perf_counter() - began) * self._rate)
            batch = self.written[self.started : min(allowed, len(self.written))]
            if batch:
                self.pace.release(batch)
                self.started += len(batch)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def paced_drain(buffer: MollifierBuffer, orgs: int, total: int, consume: int) -> float:
    """Seconds to drain ``total`` messages over ``orgs`` orgs under the default budget."""
    buffer.client.flushdb()
    seed(buffer, [(f"org{o:05}", "prod", total // orgs) for o in range(orgs)])
    workers = Workers(buffer, consume)
    assert workers.pace is not None
    settings = MollifierSettings()
    # As a worker's drainer is built (worker_drainer.py): its in-flight bound, not the class's.
    drainer = MollifierDrainer(
        buffer,
        workers,
        pace=workers.pace,
        concurrency=settings.drain_concurrency,
        max_in_flight=settings.drain_max_in_flight,
        batch_size=settings.drain_batch_size,
    )
    drainer.start()
    began = time.perf_counter()
    while workers.started < total and time.perf_counter() - began < 300:
        time.sleep(0.01)
    elapsed = time.perf_counter() - began
    drainer.stop()
    workers.stop()
    assert workers.started == total, (workers.started, total)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heavy", type=int, default=100_000)
    parser.add_argument("--consume", type=int, default=2_000, help="drained messages started per second")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binary = find_server_binary()
    if binary is None:
        print("no redis-server or valkey-server found", file=sys.stderr)
        return 2
    with EmbeddedRedis(binary) as server:
        buffer = MollifierBuffer.from_url(server.url, key_prefix="bench", socket_timeout=10)
        print(f"fairness: 1 org with {args.heavy:,} messages over 20 envs, 200 orgs with 10 each")
        fairness(buffer, args.heavy, window=500)
        fairness(buffer, args.heavy, window=50)
        print("scale: median tick cost, 100 orgs picked per tick, 1 entry each")
        small = tick_cost(buffer, 100)
        large = tick_cost(buffer, 10_000)
        print(
            f"  100 buffered orgs: {small:.1f} ms; 10,000 buffered orgs: {large:.1f} ms "
            f"({large / small:.2f}x)"
        )
        total = 20_000
        print(f"paced drain: {total:,} messages, default budget, workers starting {args.consume:,}/s")
        ratios = []
        for _ in range(args.rounds):
            few = paced_drain(buffer, 20, total, args.consume)
            many = paced_drain(buffer, 2_000, total, args.consume)
            ratios.append(few / many)
            print(
                f"  20 orgs x 1,000: {total / few:,.0f}/s; 2,000 orgs x 10: {total / many:,.0f}/s "
                f"({few / many:.2f}x)"
            )
        median = statistics.median(ratios)
        verdict = "meets" if median >= 0.8 else "misses"
        print(f"  median {median:.2f}x ({verdict} the 0.8x target)")
        buffer.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
