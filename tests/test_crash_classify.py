"""Pure policy: classifying a crashed attempt from the evidence its process left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dramatiq_mollifier.crash import SIGNALS, CrashCause, classify
from dramatiq_mollifier.crash.evidence import Evidence, evidence_path, parse_evidence, publish_dead_neighbours
from dramatiq_mollifier.crash.identity import ProcessIdentity, process_start_ticks, same_process_alive
from dramatiq_mollifier.crash.store import DeliveryRecord, ProcState
from dramatiq_mollifier.errors import CrashNotRetried, WorkerCrashed

FAULTHANDLER_REPORT = """\
dramatiq-mollifier proc=9f2 oom_kills=3
Fatal Python error: {error}

Current thread 0x00007f (most recent call first):
  File "/app/native.py", line 3 in crash
"""


@pytest.mark.parametrize(
    ("error", "signal_name"),
    [
        ("Segmentation fault", "SIGSEGV"),
        ("Bus error", "SIGBUS"),
        ("Illegal instruction", "SIGILL"),
        ("Floating point exception", "SIGFPE"),
        ("Floating-point exception", "SIGFPE"),
        ("Aborted", "SIGABRT"),
    ],
)
def test_native_crash_signals_are_named_and_retried_under_the_policy(error: str, signal_name: str) -> None:
    proc_id, evidence = parse_evidence(FAULTHANDLER_REPORT.format(error=error), oom_kills_now=3)
    verdict = classify(evidence, message_id="m", token="t")
    assert proc_id == "9f2"
    assert (verdict.signal_name, verdict.cause, verdict.retry) == (signal_name, CrashCause.NATIVE_CRASH, True)
    assert verdict.last_words.startswith(f"Fatal Python error: {error}")
    assert "/app/native.py" in verdict.last_words


def test_an_unrecognised_fatal_error_is_unknown() -> None:
    _, evidence = parse_evidence(FAULTHANDLER_REPORT.format(error="Something new"), oom_kills_now=3)
    assert classify(evidence, message_id="m", token="t").cause is CrashCause.UNKNOWN


def test_no_evidence_at_all_is_unknown_and_retried() -> None:
    verdict = classify(None, message_id="m", token="t")
    assert (verdict.signal_name, verdict.cause, verdict.retry) == ("unknown", CrashCause.UNKNOWN, True)


def test_an_interrupted_shutdown_is_sigterm_and_retried() -> None:
    _, evidence = parse_evidence("dramatiq-mollifier proc=p oom_kills=0\nshutdown\n", oom_kills_now=0)
    verdict = classify(evidence, message_id="m", token="t")
    assert (verdict.signal_name, verdict.cause, verdict.retry) == ("SIGTERM", CrashCause.SHUTDOWN, True)


def test_an_oom_kill_after_boot_is_not_retried_by_default() -> None:
    _, evidence = parse_evidence("dramatiq-mollifier proc=p oom_kills=2\n", oom_kills_now=3)
    verdict = classify(evidence, message_id="m", token="t")
    assert (verdict.signal_name, verdict.cause, verdict.retry) == ("SIGKILL", CrashCause.OOM, False)
    assert classify(evidence, message_id="m", token="t", retry_oom_kills=True).retry


def test_oom_kills_before_boot_or_unknown_counts_are_no_evidence() -> None:
    for header, now in (("oom_kills=3", 3), ("oom_kills=-1", 5)):
        _, evidence = parse_evidence(f"dramatiq-mollifier proc=p {header}\n", oom_kills_now=now)
        assert not evidence.oom_killed


def test_a_kill_while_this_delivery_overran_its_time_limit_is_not_retried_by_default() -> None:
    text = "dramatiq-mollifier proc=p oom_kills=0\noverrun m1 t1\n"
    _, evidence = parse_evidence(text, oom_kills_now=0)
    verdict = classify(evidence, message_id="m1", token="t1")
    assert (verdict.cause, verdict.retry) == (CrashCause.TIME_LIMIT, False)
    assert classify(evidence, message_id="m1", token="t1", retry_time_limit_kills=True).retry
    # Another message of the same process that did not overrun is merely unknown.
    assert classify(evidence, message_id="m2", token="t2").cause is CrashCause.UNKNOWN
    # So is a later attempt of the same message killed without overrunning (it was dead-lettered
    # as a time-limit kill, its retries left unused)
    assert classify(evidence, message_id="m1", token="t9").cause is CrashCause.UNKNOWN


def test_the_strongest_evidence_wins() -> None:
    evidence = Evidence(fatal_signal="SIGSEGV", shutdown=True, oom_killed=True, overruns=frozenset({"m t"}))
    assert classify(evidence, message_id="m", token="t").cause is CrashCause.NATIVE_CRASH
    evidence = Evidence(shutdown=True, oom_killed=True, overruns=frozenset({"m t"}))
    assert classify(evidence, message_id="m", token="t").cause is CrashCause.OOM
    evidence = Evidence(shutdown=True, overruns=frozenset({"m t"}))
    assert classify(evidence, message_id="m", token="t").cause is CrashCause.SHUTDOWN


def test_every_verdict_signal_is_in_the_bounded_set() -> None:
    cases = [None, Evidence(), Evidence(fatal_signal="SIGWHAT"), Evidence(oom_killed=True)]
    assert {classify(e, message_id="m", token="t").signal_name for e in cases} <= SIGNALS


def test_worker_crashed_is_a_middleware_error_and_not_retried_is_a_skip() -> None:
    from dramatiq.middleware import MiddlewareError, SkipMessage

    crashed = WorkerCrashed("x", signal_name="SIGSEGV", cause="native_crash")
    assert isinstance(crashed, MiddlewareError) and not isinstance(crashed, SkipMessage)
    assert (crashed.signal_name, crashed.cause) == ("SIGSEGV", "native_crash")
    assert isinstance(CrashNotRetried("x"), SkipMessage)
    assert isinstance(CrashNotRetried("x"), WorkerCrashed)


def test_records_and_process_states_round_trip() -> None:
    identity = ProcessIdentity.current()
    record = DeliveryRecord("tok", identity.host, "h o s t", identity.pid, identity.start_ticks, "p", 12)
    encoded = record.encode()
    assert encoded.startswith("tok ")
    assert DeliveryRecord.decode(encoded.encode()) == record
    state = ProcState("dead", 5, Evidence(fatal_signal="SIGILL", overruns=frozenset({"a", "b"})))
    assert ProcState.decode(state.encode()) == state


def test_a_reused_pid_is_not_the_same_process() -> None:
    me = ProcessIdentity.current()
    assert same_process_alive(me.pid, me.start_ticks)
    if me.start_ticks:  # Linux: the start time tells a reused PID apart
        assert not same_process_alive(me.pid, me.start_ticks + 1)


def test_an_exited_process_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = process_start_ticks(child.pid)
    assert ticks is not None
    child.wait()
    assert not same_process_alive(child.pid, ticks)


def test_dead_neighbours_evidence_is_published_once_and_live_ones_are_left(tmp_path: Path) -> None:
    # Given the evidence file of a process that has exited, and ours
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = process_start_ticks(child.pid) or 0
    child.wait()
    me = ProcessIdentity.current()
    evidence_path(tmp_path, child.pid, ticks).write_text(FAULTHANDLER_REPORT.format(error="Bus error"))
    evidence_path(tmp_path, me.pid, me.start_ticks).write_text("dramatiq-mollifier proc=me oom_kills=0\n")
    published: dict[str, Evidence] = {}

    # When a process of this host publishes its dead neighbours
    count = publish_dead_neighbours(tmp_path, own=(me.pid, me.start_ticks), publish=published.__setitem__)

    # Then the dead one's signal is handed over and its file removed; ours stays
    assert count == 1
    assert published["9f2"].fatal_signal == "SIGBUS"
    assert [p.name for p in tmp_path.iterdir()] == [f"{me.pid}-{me.start_ticks}.crash"]
