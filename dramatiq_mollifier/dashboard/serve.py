"""Serving the dashboard on its own, with waitress (a pure-Python production WSGI server)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask

from .security import is_loopback

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_THREADS",
    "BackgroundServer",
    "make_server",
    "serve",
    "stop_serving",
]

logger = logging.getLogger(__name__)

#: The address served by default: this machine only.
DEFAULT_HOST = "127.0.0.1"
#: The port served by default.
DEFAULT_PORT = 8080
#: Request threads of the server.
DEFAULT_THREADS = 8


def check_exposure(host: str, app: Flask) -> None:
    """Refuse to listen beyond loopback unless the app authenticates (token or basic auth)."""
    from .app import state

    with app.app_context():
        protection = state().protection
    loopback = host == "localhost" or is_loopback(host)
    if not loopback and not protection.authenticates and not protection.allow_remote_without_auth:
        raise ValueError(
            f"refusing to serve the dashboard on {host!r} without a token or basic auth: "
            "anyone who reaches it could purge dead letters or cancel work"
        )


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(app: Flask, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> Any:
    """A waitress server for ``app``, bound but not yet serving (``.run()``, ``.close()``);
    port 0 picks a free one (``.effective_port``)."""
    from waitress.server import create_server

    check_exposure(host, app)
    # Waitress drops Forwarded and X-Forwarded-* from untrusted peers by default; the app must see
    # them to refuse a request a same-host proxy relayed (security.py): kept.
    return create_server(
        app,
        host=host,
        port=port,
        threads=DEFAULT_THREADS,
        ident="dramatiq-mollifier",
        clear_untrusted_proxy_headers=False,
    )


def serve(
    app: Flask,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` until interrupted; ``on_ready`` gets the address once it listens."""
    server = make_server(app, host=host, port=port)
    if on_ready is not None:
        on_ready(_url(host, server.effective_port))
    try:
        server.run()
    finally:
        server.close()


def stop_serving(server: Any, thread: threading.Thread) -> None:
    """Close every connection of a waitress ``server`` whose loop runs in ``thread``, from inside
    that loop (woken by its trigger), and wait for the thread to end."""
    from waitress import wasyncore

    try:
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
    except OSError as exc:
        _stop_without_trigger(server, thread, exc)
    thread.join(timeout=10)


def _stop_without_trigger(server: Any, thread: threading.Thread, error: OSError) -> None:
    """The trigger's pipe is gone (seen under full test runs: EBADF). Its state is logged, to
    tell waitress closing its own trigger (``closed=True``: an error or EOF on the pipe) from a
    descriptor closed under it by other code (``closed=False``). The loop is then stopped without
    it: its map emptied here (the loop leaves when it finds it empty, within its select timeout,
    1 s), and the channels closed once its thread has ended, so no socket is closed by two
    threads at once."""
    trigger = server.trigger
    logger.warning(
        "mollifier.dashboard_stop_without_trigger error=%s closed=%s trigger_in_map=%s channels=%d",
        error,
        getattr(trigger, "_closed", None),
        any(d is trigger for d in list(server._map.values())),
        len(server._map),
    )
    channels = list(server._map.values())
    server._map.clear()
    thread.join(timeout=10)
    for channel in channels:
        with contextlib.suppress(OSError):  # a descriptor already closed under it
            channel.close()


class BackgroundServer:
    """The dashboard served from a daemon thread (the demo's page, the tests' server).

    ``url`` is where it listens; :meth:`stop` closes every connection and ends the thread, from
    any thread (the close runs inside the server's own loop, woken by its trigger).
    """

    def __init__(self, app: Flask, *, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self._app = app
        self._server = make_server(app, host=host, port=port)
        self.url = _url(host, self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name="mollifier-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and wait for the thread (idempotent)."""
        if self._thread.is_alive():
            stop_serving(self._server, self._thread)
        self._server.task_dispatcher.shutdown()
        from .app import close_app

        close_app(self._app)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
