"""The fork check on every send of the local trip evaluator: any fork (a C-level one, which runs
no Python fork hook, included) is seen, without a system call per check where Linux allows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dramatiq_mollifier.gate import forks, local_trip
from dramatiq_mollifier.gate.forks import ForkMark
from dramatiq_mollifier.models import Tenant

from .apps.c_fork_child import idle_local_trip

REPO = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_WIPEONFORK is Linux's")


def c_fork_child(case: str) -> int:
    """Exit status of ``tests/apps/c_fork_child.py``: fork(2) from libc, no Python fork hook (as in
    uwsgi), in a process of its own (not this one, whose threads could hang the child)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.apps.c_fork_child", case], cwd=REPO, timeout=60, check=False
    )
    return done.returncode


@linux_only
def test_the_mark_sees_a_c_level_fork_without_reading_the_process_id(monkeypatch: pytest.MonkeyPatch) -> None:
    mark = ForkMark()
    assert mark.wipes_on_fork
    calls = []
    monkeypatch.setattr(forks.os, "getpid", lambda: calls.append(1) or 0)
    assert not mark.forked()
    assert calls == []
    monkeypatch.undo()

    assert c_fork_child("mark") == 0


def test_without_the_page_the_mark_compares_the_process_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forks, "_wipe_on_fork_page", lambda: None)
    mark = ForkMark()
    assert not mark.wipes_on_fork
    assert not mark.forked()
    monkeypatch.setattr(forks.os, "getpid", lambda: -1)
    assert mark.forked()


@linux_only
def test_a_local_count_makes_no_system_call_for_the_fork_check(monkeypatch: pytest.MonkeyPatch) -> None:
    trip = idle_local_trip()
    calls = []
    monkeypatch.setattr(local_trip.os, "getpid", lambda: calls.append(1) or 0)
    monkeypatch.setattr(forks.os, "getpid", lambda: calls.append(1) or 0)
    for _ in range(10):
        trip.count(Tenant("acme", "prod"), True)
    assert calls == []
    assert trip._envs[Tenant("acme", "prod")].pending == 10


@linux_only
def test_a_c_level_forked_child_starts_with_no_counts() -> None:
    assert c_fork_child("counts") == 0
