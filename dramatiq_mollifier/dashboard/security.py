"""Who may see the dashboard and who may act through it.

Three layers, checked before every view:

1. **Access.** With neither a token nor basic auth configured, only loopback clients
   (``127.0.0.0/8``, ``::1``) are served, addressed by a loopback name (``Host``: ``localhost``,
   ``127.0.0.1``, ``[::1]``: a page of another site whose name was rebound to 127.0.0.1 is
   refused) and not relayed by a proxy (``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``, ``Via``:
   a proxy on the same host connects from loopback for every client); anyone else gets 403. With
   a token, a request must carry ``Authorization: Bearer <token>`` or a session that opened with
   ``?token=<token>`` (the token is then dropped from the address; the session holds a digest of
   the token, so a new token ends the sessions of the old one). With basic auth,
   ``Authorization: Basic``.
2. **CSRF.** Every POST must carry the session's CSRF value in the ``csrf_token`` field (or the
   ``X-CSRF-Token`` header); the session cookie is ``SameSite=Strict`` and ``HttpOnly``.
3. **Confirmation.** Destructive actions need ``confirm=yes``, which only the confirmation page's
   form sends (see :mod:`.views`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from flask import Request, abort, current_app, redirect, session

__all__ = ["CSRF_FIELD", "CSRF_HEADER", "Protection", "csrf_token", "is_loopback", "local_target"]

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SESSION_CSRF = "csrf"
_SESSION_AUTHED = "authed"
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
# What proxies add for the client they relay (each alone is enough to refuse the request). The
# server must pass them on: waitress drops Forwarded and X-Forwarded-* by default (serve.py).
_PROXY_HEADERS = (
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Real-IP",
    "Via",
)


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` is a loopback IP (127.0.0.0/8 or ::1)."""
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def csrf_token() -> str:
    """The session's CSRF value, created on first use."""
    token = session.get(_SESSION_CSRF)
    if not isinstance(token, str):
        token = session[_SESSION_CSRF] = secrets.token_urlsafe(32)
    return token


def local_target(target: str | None, request: Request) -> str | None:
    """``target`` if it is a path of this dashboard (under the prefix it is mounted at), for a
    redirect or a link back; None otherwise (another site, ``//host``, a scheme)."""
    if not target:
        return None
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith(request.script_root + "/")
        or target.startswith("//")
    ):
        return None
    return target


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Protection:
    """The access rules of one dashboard.

    Parameters:
      token: A shared secret; None for none.
      basic_auth: ``(user, password)``; None for none.
      allow_remote_without_auth: Serve non-loopback clients even with no token and no basic auth
        (for a dashboard behind the user's own authenticating proxy). Defaults to False.
    """

    token: str | None = None
    basic_auth: tuple[str, str] | None = None
    allow_remote_without_auth: bool = False

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 16:
            raise ValueError("the dashboard token must be at least 16 characters")
        if self.basic_auth is not None and not (
            isinstance(self.basic_auth, tuple | list)
            and len(self.basic_auth) == 2
            and all(isinstance(part, str) and part for part in self.basic_auth)
        ):
            # A string passed its check and was indexed: "admin:s3cret" let in user "a", password "d"
            raise ValueError("basic_auth must be a (user, password) pair of non-empty strings")

    @property
    def authenticates(self) -> bool:
        return self.token is not None or self.basic_auth is not None

    def check_access(self, request: Request) -> None:
        """Abort with 401 or 403 unless ``request`` may see the dashboard."""
        if not self.authenticates:
            if not self.allow_remote_without_auth and not _local(request):
                abort(
                    403,
                    "the dashboard serves only loopback clients, addressed as localhost and not "
                    "through a proxy, unless a token or basic auth is set",
                )
            return
        header = request.headers.get("Authorization", "")
        if self.basic_auth is not None and self._basic_ok(header):
            return
        if self.token is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and _same(value.strip(), self.token):
                return
            digest = _digest(self.token)
            authed = session.get(_SESSION_AUTHED)
            if isinstance(authed, str) and _same(authed, digest):
                return
            if request.method == "GET" and _same(request.args.get("token"), self.token):
                session[_SESSION_AUTHED] = digest
                # Off the address bar, history and access logs: the session cookie stands for it.
                query = urlencode([(k, v) for k, v in request.args.items(multi=True) if k != "token"])
                path = request.script_root + request.path  # under the mount's prefix
                abort(redirect(path + (f"?{query}" if query else ""), code=303))
        abort(401)

    def _basic_ok(self, header: str) -> bool:
        assert self.basic_auth is not None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, ValueError):  # bad base64, a non-ASCII header, bad UTF-8
            return False
        return _same(user, self.basic_auth[0]) & _same(password, self.basic_auth[1])

    @staticmethod
    def check_csrf(request: Request) -> None:
        """Abort with 403 unless a POST carries the session's CSRF value."""
        expected = session.get(_SESSION_CSRF)
        given = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not isinstance(expected, str) or not _same(given, expected):
            abort(403, "missing or wrong CSRF value: reload the page and try again")


def _local(request: Request) -> bool:
    """A loopback client that named the dashboard by a loopback name, with no proxy between."""
    if not is_loopback(request.remote_addr) or any(name in request.headers for name in _PROXY_HEADERS):
        return False
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return host.lower() in _LOOPBACK_NAMES


def _digest(token: str) -> str:
    """What a session opened with ``token`` holds: not the token (the cookie is signed, not
    encrypted), keyed by the app's secret, and not valid for another token."""
    key = current_app.secret_key
    key_bytes = key.encode() if isinstance(key, str) else bytes(key or b"")
    return hmac.new(key_bytes, b"mollifier-dashboard-session:" + token.encode(), hashlib.sha256).hexdigest()
