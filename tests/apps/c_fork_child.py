"""C-level forks (``fork(2)`` straight from libc, no Python fork hook, as uwsgi forks) in a process
of their own. ``python -m tests.apps.c_fork_child mark|counts``; exit status 0 when the forked
child saw what it should.

They run here, not in the test process: a child forked that way from a process with other
threads can wait forever for the interpreter lock that one of those threads had asked for, and
the test suite's process has many threads.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

from dramatiq_mollifier.breaker import CircuitBreaker
from dramatiq_mollifier.gate.forks import ForkMark
from dramatiq_mollifier.gate.local_trip import LocalTrip
from dramatiq_mollifier.models import Tenant

ACME = Tenant("acme", "prod")


def c_level_fork() -> int:
    return int(ctypes.PyDLL(None).fork())


def in_child_and_parent(child: Any, parent: Any) -> int:
    """Run ``child()`` (its exit status) in a C-level forked child, then ``parent()`` here."""
    pid = c_level_fork()
    if pid == 0:
        code = 3
        try:
            code = child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) or parent()


class _NoFold:
    def fold_trip_counts(self, counts: Any, **trip: int) -> Any:
        raise AssertionError("no fold expected")


def idle_local_trip() -> LocalTrip:
    """A local trip evaluator without its fold thread: every count stays pending."""
    trip = LocalTrip(
        backend=_NoFold(),
        window_ms=60_000,
        threshold=1_000,
        hold_ms=60_000,
        fold_interval_ms=1_000,
        breaker=CircuitBreaker("test"),
        on_error=lambda exc: None,
    )
    trip._running = True  # no fold thread: the counts stay pending
    return trip


def mark() -> int:
    """The mark sees the fork in the child (a new mark there does not); the parent is itself."""
    fork_mark = ForkMark()
    if not fork_mark.wipes_on_fork or fork_mark.forked():
        return 4
    return in_child_and_parent(
        lambda: 0 if fork_mark.forked() and not ForkMark().forked() else 1,
        lambda: 5 if fork_mark.forked() else 0,
    )


def counts() -> int:
    """A forked child starts with no counts; the parent keeps its own."""
    trip = idle_local_trip()
    for _ in range(5):
        trip.count(ACME, True)

    def child() -> int:
        trip.count(ACME, True)
        return 0 if trip._envs[ACME].pending == 1 and trip._fleet.pending == 1 else 2

    return in_child_and_parent(child, lambda: 0 if trip._envs[ACME].pending == 5 else 6)


if __name__ == "__main__":
    sys.exit({"mark": mark, "counts": counts}[sys.argv[1]]())
