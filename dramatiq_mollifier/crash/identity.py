"""Who a worker process is, and whether a process recorded earlier on this host still lives.

A process is named by its host (boot id and PID namespace, so PIDs are comparable), its PID and
its start time in clock ticks since boot (so a reused PID is told apart). Linux exposes all of
these under ``/proc``; elsewhere the start time is 0 and only the PID is checked.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

__all__ = ["ProcessIdentity", "host_id", "process_start_ticks", "same_process_alive"]

_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read().strip()
    except OSError:
        return None


def host_id() -> str:
    """This host's boot id and PID namespace; two processes with the same one share a PID space."""
    boot = _read(_BOOT_ID) or socket.gethostname()
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "pid:[?]"
    return f"{boot}/{namespace}"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state first), or None when there is no such process."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    return stat.rsplit(")", 1)[-1].split()


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if no such process; 0 if unknown."""
    fields = _stat_fields(pid)
    if fields is not None:
        return int(fields[19])  # field 22: starttime
    if os.path.isdir("/proc/self"):
        return None
    try:  # no /proc: all we can tell is whether the PID exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0
    return 0


def same_process_alive(pid: int, start_ticks: int) -> bool:
    """Whether the process (``pid``, ``start_ticks``) of this host is still running."""
    fields = _stat_fields(pid)
    if fields is None:
        return process_start_ticks(pid) is not None  # no /proc: the PID alone decides
    if fields[0] in ("Z", "X"):
        return False  # exited already; its PID is only held until its parent reaps it
    return start_ticks == 0 or int(fields[19]) == start_ticks


@dataclass(frozen=True)
class ProcessIdentity:
    """The worker process that holds a delivery."""

    #: :func:`host_id` of its host.
    host: str
    #: Its host name, for people reading logs.
    hostname: str
    pid: int
    #: :func:`process_start_ticks` of the process (0 when the platform cannot tell).
    start_ticks: int
    #: A random id for this process, used to name its heartbeat key in Redis.
    proc_id: str

    @classmethod
    def current(cls) -> ProcessIdentity:
        """The identity of the calling process (reads ``/proc``: call it at boot, not import)."""
        pid = os.getpid()
        return cls(
            host=host_id(),
            hostname=socket.gethostname(),
            pid=pid,
            start_ticks=process_start_ticks(pid) or 0,
            proc_id=uuid.uuid4().hex,
        )
