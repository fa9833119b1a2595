"""Fairness and scale of the drain rotation.

1. One org holds 100,000 buffered messages over 20 envs; 200 orgs hold 10 each. At what fraction
   of the heavy org's drain is the last light message drained? Target: within the first 1%.
   Run with the default window (500 orgs per tick) and with a window smaller than the org count.
2. A tick's cost with 100 and with 10,000 buffered orgs, ``max_orgs_per_tick`` fixed at 100.
   Target: it depends on the orgs a tick picks, not on how many are buffered.

    python benchmarks/bench_fairness.py [--heavy 100000]

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
from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary
from dramatiq_mollifier.models import BufferEntry

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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heavy", type=int, default=100_000)
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
        buffer.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
