"""Scale-out on Redis Cluster: divert and drain throughput of the slot-group layout on 1 and on
2 primaries, measured in one run, interleaved, in paired rounds.

Goal: median ratio (2 primaries / 1) at least 1.7x, with the servers the bottleneck, and the
largest primary's share of the server work at most 0.55.

    sudo python benchmarks/bench_cluster.py [--messages 20000] [--rounds 5] [--cpu-percent 10]

Each primary's CPU is capped (cgroup v1 ``cpu`` controller, ``cpu.cfs_quota_us``) so that on a
small machine the servers, not this Python client, are the bottleneck; without a writable
controller the caps are skipped and the output says so. Divert: ``accept`` calls of 256 orgs,
pipelined 200 per batch by 6 threads (each call its own script, one slot each). Drain: 6 threads
pop up to 100 entries per env and ack them (``pop_many``, ``ack_entries``), no broker. Server
microseconds per message come from ``INFO commandstats`` (EVALSHA and LRANGE, the commands sent;
the commands a script runs are inside its EVALSHA's time), summed over the primaries. Under a
CPU cap a command's time is wall-clock time and includes any throttling (or, on a busy machine,
any preemption) it met, so the shares of that time are noisier than the shares of commands. The
share of the work is therefore also given as each server process's CPU time (``INFO cpu``, user
+ system, which a stall does not inflate): the work the primary actually did, its network I/O
included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.clients import client_from_url
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.buffer.scripts import run_pipelined
from dramatiq_mollifier.embedded import EmbeddedCluster, find_server_binary

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 10_000
MIN_QUOTA_US = 1_000
ORGS = 256
BATCH = 200
THREADS = 6
PAYLOAD = b"x" * 300


class CpuCap:
    """One cgroup per capped server process; removed by :meth:`close`."""

    def __init__(self, percent: int) -> None:
        self.percent = percent
        self.groups: list[Path] = []
        self.available = (CGROUP_ROOT / "tasks").exists() and os.access(CGROUP_ROOT, os.W_OK)

    def cap(self, pid: int) -> None:
        if not self.available:
            return
        group = CGROUP_ROOT / f"mollifier-bench-{os.getpid()}-{len(self.groups)}"
        group.mkdir()
        # A 10 ms period (not the default 100 ms): a server that used up its quota stalls for at
        # most 9 ms rather than 90, so the stalls inflating the commands it was running are short.
        # The kernel's smallest quota is 1 ms, so a cap under 10% takes a longer period.
        period = max(CFS_PERIOD_US, MIN_QUOTA_US * 100 // self.percent)
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(self.percent * period // 100))
        (group / "tasks").write_text(str(pid))
        self.groups.append(group)

    def close(self) -> None:
        for group in self.groups:
            try:
                group.rmdir()
            except OSError as exc:
                print(f"could not remove {group}: {exc}", file=sys.stderr)


#: The commands this benchmark sends itself. ``INFO commandstats`` also lists each command a
#: script runs, already counted in the script's EVALSHA: summing every line would count them twice.
TOP_LEVEL = ("cmdstat_evalsha", "cmdstat_lrange")


def commandstats_usec(cluster: EmbeddedCluster) -> tuple[list[int], list[int], list[float]]:
    """Server microseconds spent in (and calls of) the benchmark's commands so far, and each
    server process's CPU seconds (``INFO cpu``: user + system), per primary."""
    usec, calls, cpu = [], [], []
    for node in cluster.primaries:
        client = cluster.client(node)
        stats = client.info("commandstats")
        usec.append(sum(int(stats[name]["usec"]) for name in TOP_LEVEL if name in stats))
        calls.append(sum(int(stats[name]["calls"]) for name in TOP_LEVEL if name in stats))
        info = client.info("cpu")
        cpu.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
        client.close()
    return usec, calls, cpu


def _minus(after: list[float], before: list[float]) -> list[float]:
    return [b - a for a, b in zip(before, after, strict=True)]


def reset_stats(cluster: EmbeddedCluster) -> None:
    for node in cluster.primaries:
        client = cluster.client(node)
        client.config_resetstat()
        client.flushall()
        client.close()


def divert(buffer: MollifierBuffer, count: int, tag: str) -> float:
    ids = [f"{tag}-{n}" for n in range(count)]
    batches = [ids[i : i + BATCH] for i in range(0, count, BATCH)]

    def send(batch: list[str]) -> None:
        calls = []
        for message_id in batch:
            t = buffer.keys.tenant(f"org{hash(message_id) % ORGS}", "prod")
            calls.append(
                ((t.space.entry(message_id), *t.accept_keys), (message_id, *t.ids, PAYLOAD, 0, b"divert"))
            )
        assert all(reply == 1 for reply in run_pipelined(buffer.client, buffer.scripts.accept, calls))

    began = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(send, batches))
    return count / (time.perf_counter() - began)


def drain(buffer: MollifierBuffer, count: int) -> float:
    protocol = DrainProtocol(buffer)
    done = [0]
    lock = threading.Lock()
    orgs = [f"org{n}" for n in range(ORGS)]

    def worker(share: list[str]) -> None:
        while True:
            got = 0
            for org in share:
                entries = protocol.pop_many(org, "prod", 100)
                if entries:
                    protocol.ack_entries(entries)
                    got += len(entries)
            with lock:
                done[0] += got
            if not got:
                return

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(orgs[i::THREADS],)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    assert done[0] == count, (done[0], count)
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-percent", type=int, default=10)
    parser.add_argument("--server")
    args = parser.parse_args()
    if not 1 <= args.cpu_percent <= 100:
        parser.error(f"--cpu-percent must be between 1 and 100, got {args.cpu_percent}")
    binary = find_server_binary(args.server)
    if binary is None:
        print("no redis-server or valkey-server", file=sys.stderr)
        return 2
    caps = CpuCap(args.cpu_percent)
    clusters = {
        1: EmbeddedCluster(binary, primaries=1).start(),
        2: EmbeddedCluster(binary, primaries=2).start(),
    }
    try:
        for cluster in clusters.values():
            for node in cluster.primaries:
                assert node.pid is not None
                caps.cap(node.pid)
        print(
            f"server {binary}; each primary capped at {args.cpu_percent}% of a core"
            if caps.available
            else "no writable cgroup v1 cpu controller: primaries NOT capped (the client may be the limit)"
        )
        buffers = {
            n: MollifierBuffer(client_from_url(c.url, socket_timeout=30), slot_groups=16)
            for n, c in clusters.items()
        }
        results: dict[str, dict[int, list[float]]] = {"divert": {1: [], 2: []}, "drain": {1: [], 2: []}}
        shares: dict[str, list[float]] = {"divert": [], "drain": []}
        call_shares: dict[str, list[float]] = {"divert": [], "drain": []}
        cpu_shares: dict[str, list[float]] = {"divert": [], "drain": []}
        per_msg: dict[str, dict[int, list[float]]] = {"divert": {1: [], 2: []}, "drain": {1: [], 2: []}}
        for round_no in range(args.rounds):
            order = (1, 2) if round_no % 2 == 0 else (2, 1)
            for primaries in order:
                cluster, buffer = clusters[primaries], buffers[primaries]
                reset_stats(cluster)
                _, _, cpu_before = commandstats_usec(cluster)
                results["divert"][primaries].append(divert(buffer, args.messages, f"r{round_no}"))
                after_divert, divert_calls, cpu_divert = commandstats_usec(cluster)
                results["drain"][primaries].append(drain(buffer, args.messages))
                after_drain, drain_calls, cpu_drain = commandstats_usec(cluster)
                drain_usec = [b - a for a, b in zip(after_divert, after_drain, strict=True)]
                drain_calls = [b - a for a, b in zip(divert_calls, drain_calls, strict=True)]
                for phase, spent, calls, cpu in (
                    ("divert", after_divert, divert_calls, _minus(cpu_divert, cpu_before)),
                    ("drain", drain_usec, drain_calls, _minus(cpu_drain, cpu_divert)),
                ):
                    per_msg[phase][primaries].append(sum(spent) / args.messages)
                    if primaries == 2:
                        shares[phase].append(max(spent) / sum(spent))
                        call_shares[phase].append(max(calls) / sum(calls))
                        cpu_shares[phase].append(max(cpu) / sum(cpu))
            last = {phase: (results[phase][1][-1], results[phase][2][-1]) for phase in results}
            print(
                f"round {round_no + 1}: divert {last['divert'][0]:,.0f} -> {last['divert'][1]:,.0f}/s, "
                f"drain {last['drain'][0]:,.0f} -> {last['drain'][1]:,.0f}/s"
            )
        print()
        for phase in ("divert", "drain"):
            ratios = [b / a for a, b in zip(results[phase][1], results[phase][2], strict=True)]
            one, two = statistics.median(results[phase][1]), statistics.median(results[phase][2])
            print(
                f"{phase}: 1 primary {one:,.0f}/s, 2 primaries "
                f"{two:,.0f}/s; median ratio {statistics.median(ratios):.2f}x "
                f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}; goal >= 1.7x); largest primary's share "
                f"{statistics.median(shares[phase]):.2f} of server time (rounds "
                f"{', '.join(f'{s:.2f}' for s in shares[phase])}; goal <= 0.55), "
                f"{statistics.median(call_shares[phase]):.2f} of commands, "
                f"{statistics.median(cpu_shares[phase]):.2f} of server CPU time (rounds "
                f"{', '.join(f'{s:.2f}' for s in cpu_shares[phase])}); server us/message "
                f"{statistics.median(per_msg[phase][1]):.1f} (1 primary), "
                f"{statistics.median(per_msg[phase][2]):.1f} (2)"
            )
        for buffer in buffers.values():
            buffer.client.close()
    finally:
        for cluster in clusters.values():
            cluster.close()
        caps.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
