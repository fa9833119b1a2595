"""Drained messages onto RabbitMQ: a chunk with one flush vs ``RabbitmqBroker.enqueue`` per message.

Starts a RabbitMQ node on loopback (as the tests do) unless given a URL, and for each of
``confirm_delivery`` off and on publishes the same messages both ways, in interleaved rounds:
``broker.enqueue`` one by one (what the drainer did) and :class:`ChunkedAmqpPublish` in chunks of
``--chunk`` (what it does). It prints the publishing thread's CPU and wall time per message, and
their ratios (chunked / per message: lower is better), the median over the rounds.

    python benchmarks/bench_amqp_publish.py [--messages 4000] [--chunk 40] [--rounds 5] [AMQP_URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from benchmarks.bench_smoothing import rabbitmq_node
from dramatiq_mollifier.drain.amqp_chunks import ChunkedAmqpPublish


def timed(publish: Callable[[Any], object], batches: Sequence[Any], count: int) -> tuple[float, float]:
    """CPU and wall µs per message of ``publish(batch)`` for each batch, on this thread."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for batch in batches:
        publish(batch)
    return (time.thread_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", nargs="?", help="AMQP URL (default: start a node on loopback)")
    parser.add_argument("--messages", type=int, default=4_000)
    parser.add_argument("--chunk", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with rabbitmq_node(args.url, True) as url:
        assert url is not None
        for confirm in (False, True):
            broker = RabbitmqBroker(url=url, confirm_delivery=confirm)
            queue = f"bench-amqp-{uuid.uuid4().hex[:8]}"

            def ingest(n: int) -> None:
                pass

            actor: dramatiq.Actor[Any, Any] = dramatiq.actor(queue_name=queue, broker=broker)(ingest)
            chunked = ChunkedAmqpPublish(broker)
            chunked([actor.message(-1)])  # connections, channels and the queue set up
            broker.enqueue(actor.message(-1))
            one: list[tuple[float, float]] = []
            many: list[tuple[float, float]] = []
            for _ in range(args.rounds):
                messages = [actor.message(n) for n in range(args.messages)]
                one.append(timed(broker.enqueue, messages, args.messages))
                chunks = [messages[i : i + args.chunk] for i in range(0, args.messages, args.chunk)]
                many.append(timed(chunked, chunks, args.messages))
                broker.channel.queue_purge(queue)
            cpu_one, wall_one = (statistics.median(x[i] for x in one) for i in (0, 1))
            cpu_many, wall_many = (statistics.median(x[i] for x in many) for i in (0, 1))
            cpu_ratio = statistics.median(m[0] / o[0] for m, o in zip(many, one, strict=True))
            wall_ratio = statistics.median(m[1] / o[1] for m, o in zip(many, one, strict=True))
            print(
                f"confirm_delivery={confirm}: per message {cpu_one:5.0f} µs CPU, {wall_one:6.0f} µs wall; "
                f"chunks of {args.chunk} {cpu_many:5.0f} µs CPU, {wall_many:6.0f} µs wall; "
                f"ratio CPU {cpu_ratio:.2f}, wall {wall_ratio:.2f} (median of {args.rounds} rounds)"
            )
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                broker.channel.queue_delete(name)
            broker.close()


if __name__ == "__main__":
    main()
