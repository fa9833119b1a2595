"""Helpers shared by the gate and middleware tests: a Mollifier under test, metrics read through the SDK."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from dramatiq_mollifier import Mollifier, MollifierBuffer, MollifierSettings
from dramatiq_mollifier.gate.flags import FLAG_REFRESH_MS

#: The trip threshold of the middleware tests: a burst of N puts this many on the broker.
THRESHOLD = 20


def metrics() -> tuple[MeterProvider, InMemoryMetricReader]:
    """A meter provider of the test's own and the reader that sees what it recorded."""
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), reader


def data_points(reader: InMemoryMetricReader, name: str | None = None) -> Iterator[tuple[str, Any]]:
    """(metric name, data point) of every point recorded so far, optionally of one metric."""
    data = reader.get_metrics_data()
    if data is None:
        return
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if name is None or metric.name == name:
                    for point in metric.data.data_points:
                        yield metric.name, point


def counts(reader: InMemoryMetricReader, name: str, *keys: str) -> Counter[tuple[Any, ...]]:
    """The counter ``name`` summed by the attribute values of ``keys``."""
    result: Counter[tuple[Any, ...]] = Counter()
    for _, point in data_points(reader, name):
        result[tuple(point.attributes.get(key) for key in keys)] += point.value
    return result


def decisions(reader: InMemoryMetricReader) -> Counter[tuple[Any, ...]]:
    """``mollifier.decisions`` by (outcome, reason, enrolled)."""
    return counts(reader, "mollifier.decisions", "outcome", "reason", "enrolled")


def total(reader: InMemoryMetricReader, name: str) -> int:
    """The sum of every point of the counter ``name``."""
    return sum(int(point.value) for _, point in data_points(reader, name))


def fail_opens(reader: InMemoryMetricReader) -> Counter[tuple[Any, ...]]:
    """``mollifier.fail_open`` by stage."""
    return counts(reader, "mollifier.fail_open", "stage")


def add_mollifier(
    broker: dramatiq.Broker,
    client: redis.Redis | None,
    key_prefix: str,
    *,
    flag_refresh_ms: int = FLAG_REFRESH_MS,
    **settings: Any,
) -> tuple[Mollifier, InMemoryMetricReader]:
    """Add a Mollifier over ``client`` enrolling ``acme``, with windows long enough for slow machines.

    Returns it and the reader of its metrics. ``settings`` override the defaults. With no
    ``client``, the Mollifier builds its own for the ``redis_url`` setting (the production path).
    """
    provider, reader = metrics()
    values: dict[str, Any] = {
        "enabled": True,
        "enabled_orgs": {"acme"},
        "key_prefix": key_prefix,
        "trip_threshold": THRESHOLD,
        "trip_window_ms": 5_000,
        "trip_hold_ms": 5_000,
        "drainer_enabled": False,
        **settings,
    }
    mollifier = Mollifier(
        MollifierSettings(**values), client=client, meter_provider=provider, flag_refresh_ms=flag_refresh_ms
    )
    broker.add_middleware(mollifier)
    return mollifier, reader


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def exit_code(process: subprocess.Popen[Any], timeout_s: float) -> int:
    """The exit code of ``process`` within ``timeout_s``; if it runs on, it is killed (no child
    outlives the test) and AssertionError says so."""
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{process.args!r} still ran after {timeout_s} s: killed") from None


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 30) -> int:
    """SIGTERM ``process`` and wait up to ``timeout_s`` for its exit code; killed past that."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return exit_code(process, timeout_s)


def fork_with_deadline(seconds: int = 60) -> int:
    """``os.fork()``, with a child that dies of SIGALRM after ``seconds``: a child stuck on a lock
    it inherited would otherwise outlive the test, a copy of pytest holding its output open."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's inherited handler
        signal.alarm(seconds)
    return pid


def in_forked_child(child: Callable[[], int]) -> tuple[int, int]:
    """Run ``child()`` in a forked child; its exit status (0 when it returned, 2 when it raised)
    and the number it returned, passed back through a pipe (0 when it raised)."""
    read, write = os.pipe()
    pid = fork_with_deadline()
    if pid == 0:  # pragma: no cover - the child
        code = 2
        try:
            os.close(read)
            os.write(write, b"%d" % child())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    value = int(os.read(read, 64) or b"0")
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), value


def drainer_threads() -> set[threading.Thread]:
    """Live drainer loop threads (other tests' leftovers included: compare with a snapshot)."""
    return {t for t in threading.enumerate() if t.name == "mollifier-drainer"}


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def leased_ids(buffer: MollifierBuffer) -> set[str]:
    """Ids with a lease, in every slot group (the one key space without groups)."""
    return {raw.decode() for group in buffer.keys.groups for raw in buffer.client.zrange(group.leases, 0, -1)}


def latest_lease_deadline(buffer: MollifierBuffer) -> float:
    latest = [
        pair
        for group in buffer.keys.groups
        for pair in buffer.client.zrange(group.leases, -1, -1, withscores=True)
    ]
    assert latest, "no lease to wait for"
    return max(float(score) for _, score in latest)


def wait_server_ms(client: redis.Redis, elapsed_ms: int) -> None:
    """Until ``elapsed_ms`` have passed on the server's clock (the one its scripts read)."""
    deadline_ms = server_ms(client) + elapsed_ms
    eventually(lambda: server_ms(client) > deadline_ms, what=f"{elapsed_ms} ms of server time")


def wait_past(buffer: MollifierBuffer, deadline_ms: float) -> None:
    """Until the server's clock has passed ``deadline_ms``."""
    eventually(lambda: server_ms(buffer.client) > deadline_ms, what="the leases to expire")


def wait_for_leases_to_expire(buffer: MollifierBuffer) -> None:
    """Until the server's clock has passed every lease deadline there is now."""
    wait_past(buffer, latest_lease_deadline(buffer))
