"""Fake Redis servers on loopback for the failure tests: one that accepts and never answers (a
stall, a blackholed address, a long fork), one that refuses connections, and any custom one."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest


class FakeServer:
    """A fake Redis on loopback: ``serve`` runs in a thread for each connection it accepts."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.accepted: list[socket.socket] = []
        self._serve = serve
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.url = f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._listener.accept()[0]
            except OSError:
                continue
            self.accepted.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed under it by close()
            self._serve(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.accepted:
            conn.close()
        self._listener.close()


@pytest.fixture
def silent_server() -> Iterator[FakeServer]:
    """Accepts connections and never answers: a hung Redis."""
    server = FakeServer(lambda conn: None)
    yield server
    server.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port that refuses connections: bound (so nobody else takes it), never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    finally:
        sock.close()
