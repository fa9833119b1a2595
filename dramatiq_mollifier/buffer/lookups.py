"""Connections whose host name lookup is bounded by their connect timeout.

redis-py looks the host up (``socket.getaddrinfo``) on every new connection, outside every
timeout. With a DNS server that does not answer, glibc waits 5 s per try and server: a send that
opened a connection to the buffer waited 20 s before failing open, and the next two sends as
long again before the circuit breaker opened. Here the lookup runs in a thread of its own and
the connection waits for it ``socket_connect_timeout`` at most, then fails as a connect that
timed out does (an outage: the send fails open). Connections that come while a lookup of the
host and port is under way share it, so a DNS outage holds one thread per host and port, and
each waits its own timeout counted from the lookup's start: once the send path's 0.5 s is over,
its next connections fail at once until the lookup ends. An answer is reused for
:data:`ANSWER_REUSE_S`: one that came too late serves the next connection (the breaker's
probe), and a burst of new connections makes one lookup.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from typing import Any

from redis.connection import Connection, SSLConnection

__all__ = ["ANSWER_REUSE_S", "BoundedLookupConnection", "BoundedLookupSSLConnection", "addresses"]

#: How long an answer (a list of addresses) is reused before the host is looked up again.
ANSWER_REUSE_S = 5.0


class _Lookup:
    """One ``getaddrinfo`` of a host and port, in a daemon thread of its own."""

    def __init__(self, host: str, port: int) -> None:
        self.done = threading.Event()
        self.addresses: list[str] = []
        self.error: OSError | None = None
        self.started_at = time.monotonic()
        self.finished_at = 0.0
        thread = threading.Thread(target=self._run, args=(host, port), name="mollifier-lookup", daemon=True)
        thread.start()

    def _run(self, host: str, port: int) -> None:
        try:
            answers = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            # In getaddrinfo's order (the order redis-py tries them in), each address once.
            self.addresses = list(dict.fromkeys(str(answer[4][0]) for answer in answers))
        except OSError as exc:
            self.error = exc
        self.finished_at = time.monotonic()
        self.done.set()

    def reusable(self, now: float) -> bool:
        if not self.done.is_set():
            return True  # under way: wait for it rather than start another
        return self.error is None and now - self.finished_at < ANSWER_REUSE_S


class _Registry:
    """The lookups under way or reusable, by host and port, and the lock over them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lookups: dict[tuple[str, int], _Lookup] = {}

    def forget_in_child(self) -> None:
        # A lookup under way in the parent has no thread in a forked child: it would never end.
        self.lock = threading.Lock()
        self.lookups = {}


_registry = _Registry()
os.register_at_fork(after_in_child=_registry.forget_in_child)


def addresses(host: str, port: int, timeout_s: float | None) -> list[str]:
    """The addresses of ``host``, waited for ``timeout_s`` at most (``None``: as long as it
    takes). Raises ``TimeoutError`` when the lookup takes longer, and the lookup's own error
    (``socket.gaierror``) when it fails."""
    try:
        ipaddress.ip_address(host.partition("%")[0])
        return [host]  # numeric: no lookup
    except ValueError:
        pass
    key = (host, port)
    with _registry.lock:
        lookup = _registry.lookups.get(key)
        if lookup is None or not lookup.reusable(time.monotonic()):
            lookup = _registry.lookups[key] = _Lookup(host, port)
    # Each connection waits out its own timeout, counted from the lookup's start.
    wait_s = None if timeout_s is None else max(0.0, lookup.started_at + timeout_s - time.monotonic())
    if not lookup.done.wait(wait_s):
        raise TimeoutError(f"looking up {host!r} took more than {timeout_s} s")
    if lookup.error is not None:
        raise lookup.error
    return lookup.addresses


class BoundedLookupConnection(Connection):
    """A redis-py ``Connection`` whose host lookup waits ``socket_connect_timeout`` at most.

    Each address the lookup gives is tried in turn, as redis-py tries them; the host name itself
    is kept for everything else (TLS checks the certificate against it).
    """

    def _connect(self) -> Any:
        host = self.host
        error: OSError | None = None
        try:
            for address in addresses(host, int(self.port), self.socket_connect_timeout):
                self.host = address
                try:
                    return super()._connect()  # type: ignore[no-untyped-call]
                except OSError as exc:
                    error = exc
        finally:
            self.host = host
        raise error or OSError(f"looking up {host!r} gave no address")


class BoundedLookupSSLConnection(SSLConnection, BoundedLookupConnection):
    """:class:`BoundedLookupConnection` over TLS: the socket comes from the bounded lookup, and
    ``SSLConnection`` wraps it with the host name restored."""
