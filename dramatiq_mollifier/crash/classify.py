"""Pure policy: what a crashed attempt was, and whether the actor's retry policy applies to it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .evidence import Evidence

__all__ = ["SIGNALS", "CrashCause", "CrashVerdict", "classify"]

#: Every value the ``signal`` metric attribute and ``WorkerCrashed.signal_name`` can take.
SIGNALS = frozenset({"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGTERM", "SIGKILL", "unknown"})


class CrashCause(str, enum.Enum):
    """Why the process died, as far as the evidence tells."""

    #: A native crash signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT), reported by faulthandler.
    NATIVE_CRASH = "native_crash"
    #: The process was shutting down (SIGTERM) and did not finish the message in time.
    SHUTDOWN = "shutdown"
    #: The kernel's out-of-memory killer (SIGKILL) took a process of its memory cgroup.
    OOM = "oom"
    #: The message ran past its time limit and the process was killed while it overran.
    TIME_LIMIT = "time_limit"
    #: No evidence: another host, a SIGKILL from elsewhere, faulthandler not installed.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CrashVerdict:
    """The classification of one crashed attempt."""

    #: One of :data:`SIGNALS`.
    signal_name: str
    cause: CrashCause
    #: True: raise ``WorkerCrashed`` so the actor's retry policy applies. False: fail at once.
    retry: bool
    #: The start of the crashed process's faulthandler report, or "".
    last_words: str = ""


def classify(
    evidence: Evidence | None,
    *,
    message_id: str,
    token: str,
    retry_oom_kills: bool = False,
    retry_time_limit_kills: bool = False,
) -> CrashVerdict:
    """Classify the crashed attempt of ``message_id`` (its delivery ``token``) from what its
    process left behind.

    The strongest evidence wins: a fatal signal report, then an out-of-memory kill, then a
    shutdown in progress, then a time-limit overrun of this very delivery (an earlier attempt's
    overrun in the same process says nothing of this one), else unknown.
    Only out-of-memory and time-limit kills skip the retry policy, and only unless allowed.
    """
    if evidence is None:
        return CrashVerdict("unknown", CrashCause.UNKNOWN, retry=True)
    if evidence.fatal_signal is not None:
        signal_name = evidence.fatal_signal if evidence.fatal_signal in SIGNALS else "unknown"
        return CrashVerdict(signal_name, CrashCause.NATIVE_CRASH, retry=True, last_words=evidence.last_words)
    if evidence.oom_killed:
        return CrashVerdict("SIGKILL", CrashCause.OOM, retry=retry_oom_kills)
    if evidence.shutdown:
        return CrashVerdict("SIGTERM", CrashCause.SHUTDOWN, retry=True)
    if f"{message_id} {token}" in evidence.overruns:
        return CrashVerdict("unknown", CrashCause.TIME_LIMIT, retry=retry_time_limit_kills)
    return CrashVerdict("unknown", CrashCause.UNKNOWN, retry=True)
