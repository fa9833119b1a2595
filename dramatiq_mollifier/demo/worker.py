"""The demo's worker: the real ``dramatiq`` command on the demo app, in a subprocess.

A subprocess rather than an in-process ``dramatiq.Worker``: the producer, the worker and its
drainer each get their own interpreter (and GIL), so on two cores the timings mean what they
would in production, and the demo shows the drainer starting and stopping with the stock worker.
Booting it costs about a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from ..console import CommandError
from .app import CONFIG_VARIABLE, DemoConfig, DemoKeys

__all__ = ["WorkerProcess"]

#: How long the worker may take to boot, in seconds.
WORKER_BOOT_TIMEOUT_S = 30
#: How long the worker may take to stop after SIGTERM before it is killed, in seconds.
WORKER_STOP_TIMEOUT_S = 20


class WorkerProcess:
    """``dramatiq dramatiq_mollifier.demo.app:setup_worker``, in a process group of its own."""

    def __init__(self, config: DemoConfig, *, threads: int, log_path: Path) -> None:
        self.config = config
        self.threads = threads
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            sys.executable, "-m", "dramatiq", "dramatiq_mollifier.demo.app:setup_worker",
            "--processes", "1", "--threads", str(self.threads), "--queues", DemoKeys(self.config).queue,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")}
        env.update({CONFIG_VARIABLE: self.config.to_json(), "PYTHONUNBUFFERED": "1"})
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, client: redis.Redis) -> None:
        deadline = time.monotonic() + WORKER_BOOT_TIMEOUT_S
        ready_key = DemoKeys(self.config).ready
        while int(client.get(ready_key) or 0) < 1:
            assert self._process is not None
            if self._process.poll() is not None:
                raise CommandError(f"the dramatiq worker exited at boot:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise CommandError(
                    f"the dramatiq worker did not boot in {WORKER_BOOT_TIMEOUT_S} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM (Dramatiq's graceful shutdown, which stops the drainer), then SIGKILL; the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            # Past the timeout, or a second Ctrl-C during the wait: the group we created (the
            # worker and its children) must not outlive the demo.
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        return process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
