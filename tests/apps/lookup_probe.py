"""Sends through a Mollifier whose buffer URL names a host, for ``tests/test_host_lookups.py``.

Run inside a mount namespace of the test's (``unshare -m``) where ``/etc/resolv.conf`` names
``$LOOKUP_DNS`` and ``/etc/hosts`` the test's names. Prints one JSON object.

``blackhole URL``: plays a DNS server on ``$LOOKUP_DNS`` port 53 that never answers, looks a name up
plainly (to show the lookup really hangs), and sends meanwhile; then forks and reports whether
the child starts with no lookup under way. ``by-name URL``: sends, and reports the buffer's depth.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

import dramatiq
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import lookups

SENDS = 20


def mollified(url: str) -> tuple[StubBroker, Mollifier, dramatiq.Actor[[], None]]:
    broker = StubBroker()
    # Every send diverted, each with a round trip of its own.
    settings = MollifierSettings(
        enabled=True, enabled_orgs={"*"}, redis_url=url, trip_threshold=0, trip_evaluator="exact"
    )
    mollifier = Mollifier(settings)
    broker.add_middleware(mollifier)

    @dramatiq.actor(broker=broker)
    def ingest() -> None: ...

    return broker, mollifier, ingest


def blackhole(url: str) -> dict[str, object]:
    silent = [socket.socket(socket.AF_INET, kind) for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]
    for sock in silent:
        sock.bind((os.environ["LOOKUP_DNS"], 53))
    silent[1].listen(16)
    raw: dict[str, float] = {}

    def plain_lookup() -> None:
        began = time.monotonic()
        with contextlib.suppress(OSError):
            socket.getaddrinfo("plain.blackhole.test", 6379)
        raw["seconds"] = time.monotonic() - began

    plain = threading.Thread(target=plain_lookup)
    plain.start()
    broker, _, ingest = mollified(url)
    durations = []
    for _ in range(SENDS):
        began = time.monotonic()
        ingest.send_with_options(org_id="acme", env_id="prod")
        durations.append(time.monotonic() - began)
    # Another client of the same host with a longer connect timeout (1.5 s) waits out its own,
    # counted from the lookup's start, not the send path's 0.5 s.
    began = time.monotonic()
    with contextlib.suppress(TimeoutError):
        target = urlsplit(url)
        lookups.addresses(str(target.hostname), int(target.port or 6379), 1.5)
    other_wait_s = time.monotonic() - began
    plain.join()
    child = os.fork()
    if child == 0:
        os._exit(0 if not lookups._registry.lookups else 1)
    _, status = os.waitpid(child, 0)
    return {
        "durations": durations,
        "queued": broker.queues["default"].qsize(),
        "plain_lookup_s": raw["seconds"],
        "longer_timeout_waited_s": other_wait_s,
        "parent_lookups": len(lookups._registry.lookups),
        "child_starts_clean": os.waitstatus_to_exitcode(status) == 0,
    }


def by_name(url: str) -> dict[str, object]:
    broker, mollifier, ingest = mollified(url)
    for _ in range(SENDS):
        ingest.send_with_options(org_id="acme", env_id="prod")
    return {"queued": broker.queues["default"].qsize(), "depth": mollifier.buffer.depth("acme")}


if __name__ == "__main__":
    case, url = sys.argv[1:3]
    print(json.dumps(blackhole(url) if case == "blackhole" else by_name(url)))
