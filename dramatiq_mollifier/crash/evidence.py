"""Last words of a worker process, written where a later process on the same host can read them.

Each worker process keeps one small file, named for its PID and start time, in ``evidence_dir``:

* a header line with its heartbeat id and its cgroup's out-of-memory kill count at boot;
* ``faulthandler``'s report, written from a C-level signal handler when the process dies of
  SIGSEGV, SIGBUS, SIGILL, SIGFPE or SIGABRT (``Fatal Python error: Segmentation fault`` and the
  Python stacks of its threads): Python code cannot run in a segfaulting process, C can;
* a ``shutdown`` line when Dramatiq began a graceful shutdown (SIGTERM, SIGHUP);
* an ``overrun <message id> <delivery token>`` line when a delivery ran past its time limit and
  kept running.

A clean exit deletes the file. A file left behind belongs to a process that died.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .identity import same_process_alive

__all__ = [
    "Evidence",
    "EvidenceFile",
    "dead_evidence_files",
    "evidence_path",
    "oom_kill_count",
    "parse_evidence",
    "publish_dead_neighbours",
    "default_evidence_dir",
    "read_evidence",
]

#: faulthandler's wording for each fatal signal (both spellings of SIGFPE across versions).
FATAL_ERRORS = {
    "Segmentation fault": "SIGSEGV",
    "Bus error": "SIGBUS",
    "Illegal instruction": "SIGILL",
    "Floating point exception": "SIGFPE",
    "Floating-point exception": "SIGFPE",
    "Aborted": "SIGABRT",
}

#: At most this many characters of a crashed process's report are carried on the failure.
LAST_WORDS_CHARS = 2_000

_FATAL = re.compile(r"^Fatal Python error: (.+?)\s*$", re.MULTILINE)
_HEADER = re.compile(r"^dramatiq-mollifier proc=(\S+) oom_kills=(-?\d+)", re.MULTILINE)


def oom_kill_count() -> int:
    """Out-of-memory kills so far in this process's memory cgroup (v2 or v1); -1 if unknown."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return -1
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidate = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events"
        elif "memory" in controllers.split(","):
            candidate = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control"
        else:
            continue
        try:
            text = candidate.read_text()
        except OSError:
            continue
        match = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    return -1


@dataclass(frozen=True)
class Evidence:
    """What a dead process left behind about its end."""

    #: The fatal signal faulthandler reported (``"SIGSEGV"``, ...), or None.
    fatal_signal: str | None = None
    #: Whether the process had begun a graceful shutdown.
    shutdown: bool = False
    #: Whether its memory cgroup counted an out-of-memory kill after it booted.
    oom_killed: bool = False
    #: ``<message id> <delivery token>`` of each delivery that ran past its time limit there.
    overruns: frozenset[str] = field(default_factory=frozenset)
    #: The start of faulthandler's report (stacks of the crashed process), or "".
    last_words: str = ""


def parse_evidence(text: str, *, oom_kills_now: int) -> tuple[str | None, Evidence]:
    """The heartbeat id named in an evidence file's header, and what the file shows."""
    header = _HEADER.search(text)
    proc_id = header.group(1) if header else None
    oom_at_boot = int(header.group(2)) if header else -1
    fatal = _FATAL.search(text)
    fatal_signal = FATAL_ERRORS.get(fatal.group(1)) if fatal else None
    last_words = text[fatal.start() : fatal.start() + LAST_WORDS_CHARS] if fatal else ""
    overruns = frozenset(f"{m[1]} {m[2]}" for m in re.finditer(r"^overrun (.+) (\S+)$", text, re.MULTILINE))
    evidence = Evidence(
        fatal_signal=fatal_signal,
        shutdown=re.search(r"^shutdown$", text, re.MULTILINE) is not None,
        oom_killed=0 <= oom_at_boot < oom_kills_now,
        overruns=overruns,
        last_words=last_words,
    )
    return proc_id, evidence


def evidence_path(directory: Path, pid: int, start_ticks: int) -> Path:
    """The evidence file of process (``pid``, ``start_ticks``) in ``directory``."""
    return directory / f"{pid}-{start_ticks}.crash"


def read_evidence(directory: Path, pid: int, start_ticks: int) -> Evidence | None:
    """The evidence a dead process of this host left, or None if it left no file."""
    try:
        text = evidence_path(directory, pid, start_ticks).read_text(errors="replace")
    except OSError:
        return None
    return parse_evidence(text, oom_kills_now=oom_kill_count())[1]


class EvidenceFile:
    """The calling process's own evidence file, with faulthandler pointed at it.

    Parameters:
      directory: Where evidence files live; created (mode 0700) if missing.
      pid: This process's PID.
      start_ticks: This process's start time (see :mod:`.identity`).
      proc_id: This process's heartbeat id, written in the header.
      install_faulthandler: Point ``faulthandler`` at the file. Defaults to True. Without it a
        native crash is classified ``unknown``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        pid: int,
        start_ticks: int,
        proc_id: str,
        install_faulthandler: bool = True,
    ) -> None:
        self.path = evidence_path(directory, pid, start_ticks)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_APPEND: our lines and faulthandler's report share the file without clobbering.
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        # The heartbeat thread writes while a shutdown may close: a write after the close would
        # hit a closed descriptor, or a reused one that belongs to another file.
        self._lock = threading.Lock()
        self._faulthandler = install_faulthandler
        self._had_faulthandler = faulthandler.is_enabled()
        self.write(f"dramatiq-mollifier proc={proc_id} oom_kills={oom_kill_count()}")
        if install_faulthandler:
            faulthandler.enable(file=self._fd, all_threads=True)

    def write(self, line: str) -> None:
        """Append one line (a no-op once closed)."""
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, line.encode("utf-8", "replace") + b"\n")

    def close(self, *, keep: bool) -> None:
        """Stop writing; delete the file unless ``keep`` (evidence for the next process)."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._faulthandler:
            faulthandler.disable()
            if self._had_faulthandler and sys.stderr is not None:
                # Give back the user's faulthandler, on its usual stream.
                with contextlib.suppress(ValueError, OSError, AttributeError):
                    faulthandler.enable(file=sys.stderr, all_threads=True)
        os.close(fd)
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def dead_evidence_files(directory: Path) -> list[tuple[int, int, Path]]:
    """Evidence files of this directory, as (pid, start_ticks, path), for the caller to judge."""
    found = []
    try:
        paths = list(directory.glob("*.crash"))
    except OSError:
        return []
    for path in paths:
        pid, _, ticks = path.stem.partition("-")
        if pid.isdigit() and ticks.isdigit():
            found.append((int(pid), int(ticks), path))
    return found


def publish_dead_neighbours(
    directory: Path, *, own: tuple[int, int], publish: Callable[[str, Evidence], object]
) -> int:
    """Hand what dead processes of this host left to ``publish(proc_id, evidence)``, then delete it.

    ``own`` is this process's (pid, start_ticks). Files of live processes are left alone. Returns
    how many files were published. An error from ``publish`` propagates, keeping the file.
    """
    published = 0
    for pid, ticks, path in dead_evidence_files(directory):
        if (pid, ticks) == own or same_process_alive(pid, ticks):
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        proc_id, evidence = parse_evidence(text, oom_kills_now=oom_kill_count())
        if proc_id is not None:
            publish(proc_id, evidence)
            published += 1
        path.unlink(missing_ok=True)
    return published


def default_evidence_dir() -> Path:
    """``<tmp>/dramatiq-mollifier-<uid>``: local to the host, private to the user."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"dramatiq-mollifier-{uid}"
