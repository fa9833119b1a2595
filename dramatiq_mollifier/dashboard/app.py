"""The dashboard as a WSGI application (Flask), and the same application for ASGI hosts.

Mount it in your own application, as ``dramatiq_dashboard`` is::

    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from dramatiq_mollifier.dashboard import create_app

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/mollifier": create_app(token=SECRET)})

or under an ASGI framework (Starlette, FastAPI, Django's ASGI)::

    from dramatiq_mollifier.dashboard import create_asgi_app
    app.mount("/mollifier", create_asgi_app(token=SECRET))
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from flask import Flask, request

from ..breaker import CircuitBreaker
from ..buffer import MollifierBuffer
from ..buffer.clients import client_from_url
from ..buffer.controls import TenantControls
from ..buffer.listing import ListingScripts
from ..errors import BufferUnavailableError
from ..settings import MollifierSettings
from .broker_depth import broker_depth_reader
from .security import Protection, csrf_token
from .series import DEFAULT_INTERVAL_MS, DepthSeries

__all__ = ["EXTENSION", "DashboardState", "close_app", "create_app", "create_asgi_app", "state"]

#: The key of the dashboard's state in ``app.extensions``.
EXTENSION = "mollifier_dashboard"


@dataclass
class DashboardState:
    """What every view reads: the buffer, the settings, the access rules, the chart's series."""

    buffer: MollifierBuffer
    controls: TenantControls
    #: The listing's read-only scripts, for an org's page (the oldest entry of its envs).
    listing: ListingScripts
    settings: MollifierSettings
    protection: Protection
    series: DepthSeries
    broker_depth: Callable[[], int] | None
    breaker: CircuitBreaker | None


def state() -> DashboardState:
    """The state of the application serving the current request."""
    from flask import current_app

    found: DashboardState = current_app.extensions[EXTENSION]
    return found


def create_app(
    *,
    settings: MollifierSettings | None = None,
    client: redis.Redis | None = None,
    token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    allow_remote_without_auth: bool = False,
    broker: dramatiq.Broker | None = None,
    broker_depth: Callable[[], int] | None = None,
    breaker: CircuitBreaker | None = None,
    secret_key: str | bytes | None = None,
    sample_interval_ms: int = DEFAULT_INTERVAL_MS,
) -> Flask:
    """The dashboard as a Flask (WSGI) application.

    Parameters:
      settings: Where the buffer is (``redis_url``, ``key_prefix``) and the static enrolment.
        Defaults to ``MollifierSettings()`` (the ``MOLLIFIER_*`` environment).
      client: A ``redis.Redis`` client for the buffer. Defaults to one for ``settings.redis_url``.
      token: A shared secret of at least 16 characters: requests carry ``Authorization: Bearer``
        or open a session with ``?token=``. Defaults to none.
      basic_auth: ``(user, password)`` for HTTP basic auth. Defaults to none.
      allow_remote_without_auth: With neither token nor basic auth, serve non-loopback clients
        too (only behind your own authenticating proxy). Defaults to False: loopback only.
      broker: The Dramatiq broker whose queue depth the chart shows (Redis or RabbitMQ).
        Defaults to none: the chart shows the buffer alone.
      broker_depth: A reader of the broker's depth, instead of ``broker``.
      breaker: The middleware's circuit breaker (``Mollifier(...).breaker``), when mounted in a
        process that runs the middleware: the overview shows whether it is open.
      secret_key: Signs the session cookie (CSRF value, token session). Defaults to a random key
        per process: give one when several processes serve the same dashboard.
      sample_interval_ms: Time between two points of the chart. Defaults to 2 seconds.
    """
    settings = settings if settings is not None else MollifierSettings()
    if client is None:
        client = client_from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10)
    buffer = MollifierBuffer(client, **settings.buffer_options)
    if broker_depth is None and broker is not None:
        broker_depth = broker_depth_reader(broker)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key if secret_key is not None else secrets.token_bytes(32),
        SESSION_COOKIE_NAME="mollifier_dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.extensions[EXTENSION] = DashboardState(
        buffer=buffer,
        controls=TenantControls(client, key_prefix=settings.key_prefix, settings=settings),
        listing=ListingScripts(client),
        settings=settings,
        protection=Protection(
            token=token, basic_auth=basic_auth, allow_remote_without_auth=allow_remote_without_auth
        ),
        series=DepthSeries(
            buffer_depth=buffer.depth, broker_depth=broker_depth, interval_ms=sample_interval_ms
        ),
        broker_depth=broker_depth,
        breaker=breaker,
    )

    @app.before_request
    def protect() -> None:
        protection = state().protection
        protection.check_access(request)
        # A method the route does not take answers 405 (routing), not the CSRF check's 403.
        if request.method not in ("GET", "HEAD", "OPTIONS") and request.routing_exception is None:
            protection.check_csrf(request)

    @app.after_request
    def headers(response: Any) -> Any:
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'"
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(BufferUnavailableError)
    @app.errorhandler(redis.RedisError)
    def unavailable(exc: Exception) -> tuple[Any, int]:
        from flask import jsonify, render_template

        if request.path.startswith("/api/"):  # the chart's poll reads JSON, errors included
            return jsonify(error=f"Redis failed: {exc}"), 503
        return render_template("message.html", text=f"Redis failed: {exc}"), 503

    app.jinja_env.globals["csrf_token"] = csrf_token
    from . import actions, views

    app.register_blueprint(views.blueprint)
    app.register_blueprint(actions.blueprint)
    return app


def close_app(app: Flask) -> None:
    """Stop the dashboard's chart sampler (for an application that unmounts it, and tests)."""
    found: DashboardState = app.extensions[EXTENSION]
    found.series.close()


def create_asgi_app(**options: Any) -> Any:
    """The dashboard for an ASGI host: :func:`create_app` wrapped by ``a2wsgi``'s WSGIMiddleware
    (each request runs in a thread pool; the same options)."""
    from a2wsgi import WSGIMiddleware

    return WSGIMiddleware(create_app(**options))  # type: ignore[arg-type]
