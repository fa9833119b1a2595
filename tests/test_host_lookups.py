"""The buffer's connections look their host up within their connect timeout.

redis-py resolves the host on every new connection outside every timeout: with a DNS server
that does not answer, a send waited out glibc's retries (20 s with its defaults) before failing
open. Each case runs ``tests/apps/lookup_probe.py`` in a mount namespace of its own
(``unshare -m``, which needs root, as CI has), with ``/etc/resolv.conf`` naming a DNS server that
never answers and ``/etc/hosts`` the test's names: real lookups, slow or fast as the case needs,
and the machine's own files untouched.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme

from dramatiq_mollifier.embedded import free_ports

from .servers import unavailable

REPO = Path(__file__).resolve().parent.parent
NAME = "redis.lookup.test"


def probe(tmp_path: Path, hosts: str, *args: str) -> dict[str, object]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        unavailable("a mount namespace of the test's own needs root and util-linux's unshare")
    (tmp_path / "hosts").write_text(hosts)
    # One try of 2 s per query: a plain lookup of a name the hosts file lacks takes 2 s or more.
    dns = f"127.77.{random.randrange(256)}.{random.randrange(1, 255)}"  # its own, whatever else runs
    (tmp_path / "resolv.conf").write_text(f"nameserver {dns}\noptions timeout:2 attempts:1\n")
    script = (
        f"mount --bind {tmp_path / 'hosts'} /etc/hosts"
        f" && mount --bind {tmp_path / 'resolv.conf'} /etc/resolv.conf"
        ' && exec "$0" -m tests.apps.lookup_probe "$@"'
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, sys.executable, *args],
        cwd=REPO, env={**os.environ, "LOOKUP_DNS": dns}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    print(result)
    return result


def test_a_dns_server_that_never_answers_holds_a_send_for_the_connect_timeout_at_most(tmp_path: Path) -> None:
    # Given a buffer URL whose host only DNS could name, and a DNS server that never answers
    result = probe(tmp_path, "127.0.0.1 localhost\n", "blackhole", f"redis://{NAME}:6390/0")
    # (a plain lookup of such a name really hangs: glibc waits out its try)
    assert result["plain_lookup_s"] >= 1.9
    # When 20 sends are diverted, Then the first waits the 0.5 s connect timeout, not the
    # lookup's 2 s, and the others fail open at once while that lookup is still under way
    durations = result["durations"]
    assert isinstance(durations, list)
    assert durations[0] < 1.5, durations
    assert max(durations[1:]) < 0.3, durations
    # And a connection with a longer timeout (1.5 s, from the lookup's start) still waits its own
    waited = result["longer_timeout_waited_s"]
    assert isinstance(waited, float) and 0.5 < waited < 1.4, waited
    # And nothing is lost: every send went to the broker
    assert result["queued"] == 20
    # And a forked child does not inherit the parent's lookup (no thread of its would end it)
    assert result["parent_lookups"] == 1
    assert result["child_starts_clean"] is True


@pytest.fixture
def named_server(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """Debian's redis-server on 127.0.0.1, a plain and a TLS port, its certificate for NAME."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no redis-server on PATH, built with TLS, for a TLS server")
        raise AssertionError("unreachable")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    authority.issue_cert(NAME).private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    plain, tls = free_ports(2)
    server = subprocess.Popen(
        [binary, "--port", str(plain), "--tls-port", str(tls), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(tmp_path), "--tls-cert-file", str(tmp_path / "server.pem"),
         "--tls-key-file", str(tmp_path / "server.pem"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
         "--tls-auth-clients", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with redis.Redis(port=plain, socket_timeout=1) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        unavailable(f"{binary} did not start on ports {plain} and {tls}")
                    time.sleep(0.05)
        yield plain, tls, tmp_path / "ca.pem"
    finally:
        server.kill()
        server.wait()


def test_a_named_host_is_reached_through_each_of_its_addresses_with_tls_checked_against_the_name(
    tmp_path: Path, named_server: tuple[int, int, Path]
) -> None:
    plain, tls, ca = named_server
    # Given a name whose first address (::1) refuses, then 127.0.0.1, where the server is
    hosts = f"127.0.0.1 localhost\n::1 {NAME}\n127.0.0.1 {NAME}\n"
    for url in (
        f"redis://{NAME}:{plain}/0",
        f"rediss://{NAME}:{tls}/0?ssl_ca_certs={ca}&ssl_check_hostname=true",
    ):
        # When sends are diverted through a URL that names it (over TLS: the certificate is
        # issued for the name, not for the address connected to)
        result = probe(tmp_path, hosts, "by-name", url)
        # Then every send reached the buffer, none failed open
        assert result == {"queued": 0, "depth": 20}, url
        with redis.Redis(port=plain) as client:
            client.flushall()
