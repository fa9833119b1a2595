"""The dashboard where a review found it unsafe or wrong: DNS rebinding and proxies in loopback-only
mode, a session that outlived its token, stripped tenant ids acting on another tenant, redirects
out of a mount prefix, an open "go back" link, a 500 on a bad header. Each test drives a served
dashboard (waitress) over real HTTP against the session's real Redis; each failed before its fix."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape
from html.parser import HTMLParser
from typing import Any

import pytest
import redis
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.controls import TenantControls
from dramatiq_mollifier.dashboard import create_app
from dramatiq_mollifier.dashboard.app import close_app
from dramatiq_mollifier.dashboard.series import DepthSeries
from dramatiq_mollifier.dashboard.serve import stop_serving
from dramatiq_mollifier.settings import MollifierSettings

from .cli_helpers import dead_letter
from .dashboard_helpers import TOKEN, fill, served


# --- a tiny raw HTTP client (keeps cookies, never follows redirects, any Host header) ---------
class Http:
    def __init__(self, port: int, host_header: str | None = None) -> None:
        self.port = port
        self.host_header = host_header
        self.cookies: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            body = urllib.parse.urlencode(form) if form is not None else None
            h = dict(headers or {})
            if self.host_header:
                h["Host"] = self.host_header
            if self.cookies:
                h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            if body is not None:
                h["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=h)
            response = conn.getresponse()
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    self.cookies[key] = rest.split(";", 1)[0]
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            conn.close()


class Forms(HTMLParser):
    """Every <form>: its action and its hidden inputs, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "method": a.get("method"), "fields": []})
        elif tag == "input" and self.forms and a.get("type") == "hidden":
            self.forms[-1]["fields"].append((a["name"], a.get("value") or ""))


def forms_of(page: str) -> list[dict[str, Any]]:
    parser = Forms()
    parser.feed(page)
    return parser.forms


@contextmanager
def serve_wsgi(app: Any) -> Iterator[int]:
    """Any WSGI app served by waitress on a free loopback port (stopped by this block, as the
    dashboard's own server stops: its trigger's descriptor was once closed under it, EBADF)."""
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        stop_serving(server, thread)
        server.task_dispatcher.shutdown()


def _host_app(environ: dict[str, Any], start_response: Any) -> Any:
    return Response("the host application: " + environ["PATH_INFO"], status=404)(environ, start_response)


def query_of(link: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)


def port_of(server: Any) -> int:
    return int(server.url.rsplit(":", 1)[1].strip("/"))


# 1. Mounted under a prefix (the README's own example), redirects and "back" links leave it -----
@contextmanager
def mounted(client: redis.Redis, redis_url: str, key_prefix: str) -> Iterator[int]:
    """The dashboard mounted under /mollifier in a host WSGI app, served: its port."""
    settings = MollifierSettings(redis_url=redis_url, key_prefix=key_prefix)
    dash = create_app(settings=settings, client=client, token=TOKEN)
    try:
        with serve_wsgi(DispatcherMiddleware(_host_app, {"/mollifier": dash})) as port:
            yield port
    finally:
        close_app(dash)


def test_mounted_under_a_prefix_the_redirects_stay_under_it(
    buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    fill(buffer, [("acme", "prod", 2)])
    with mounted(redis_client, redis_url, key_prefix) as port:
        browser = Http(port)
        # Opening the dashboard with ?token= (as the README says) redirected out of the mount
        status, headers, _ = browser.request("GET", f"/mollifier/tenants?sort=depth&token={TOKEN}")
        assert status == 303
        assert headers["Location"].startswith("/mollifier/"), headers["Location"]


def test_mounted_under_a_prefix_an_action_returns_to_the_dashboard(
    buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    fill(buffer, [("acme", "prod", 2)])
    with mounted(redis_client, redis_url, key_prefix) as port:
        browser = Http(port)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        status, _, page = browser.request("GET", "/mollifier/tenants", headers=bearer)
        assert status == 200
        pause = next(f for f in forms_of(page) if f["action"].endswith("/actions/pause"))
        # Submit the Pause button exactly as the page renders it
        status, headers, _ = browser.request("POST", pause["action"], dict(pause["fields"]), bearer)
        assert status == 303
        location = headers["Location"]
        assert location.startswith("/mollifier/"), f"sent to the host app: {location}"


# 2. Ids with surrounding whitespace: the action acts on another tenant -------------------------
def test_pause_from_the_tenant_table_pauses_the_row_it_is_on(
    buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    # Two tenants: "acme" and "acme " (a tenant-chosen id with a trailing space)
    fill(buffer, [("acme", "prod", 2), ("acme ", "prod", 3)])
    with served(redis_client, redis_url, key_prefix) as server:
        browser = Http(port_of(server))
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        status, _, page = browser.request("GET", "/tenants", headers=bearer)
        assert status == 200
        pauses = [dict(f["fields"]) for f in forms_of(page) if f["action"] == "/actions/pause"]
        form = next(f for f in pauses if f["org"] == "acme ")
        assert browser.request("POST", "/actions/pause", form, bearer)[0] == 303
    paused = [(p.org_id, p.env_id) for p in TenantControls(redis_client, key_prefix=key_prefix).paused()]
    assert paused == [("acme ", "prod")], f"paused instead: {paused}"


def test_cancel_of_an_env_cancels_that_env_only(
    buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    # acme has envs "prod" (2 messages) and "prod " (1 message)
    fill(buffer, [("acme", "prod", 2), ("acme", "prod ", 1)])
    with served(redis_client, redis_url, key_prefix) as server:
        browser = Http(port_of(server))
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        _, _, page = browser.request("GET", "/tenant?org=acme", headers=bearer)
        # The "Cancel…" link of the row of env "prod "
        links = [unescape(h) for h in re.findall(r'href="(/confirm\?action=cancel[^"]*)"', page)]
        link = next(
            h for h in links if urllib.parse.parse_qs(urllib.parse.urlsplit(h).query).get("env") == ["prod "]
        )
        _, _, confirm = browser.request("GET", link, headers=bearer)
        form = forms_of(confirm)[0]
        assert browser.request("POST", form["action"], dict(form["fields"]), bearer)[0] == 303
    depths = (buffer.depth("acme", "prod "), buffer.depth("acme", "prod"))
    assert depths == (0, 2), f"(prod-space, prod) depths after cancelling env 'prod ': {depths}"


# 3. Loopback-only mode answers any Host: DNS rebinding reads the CSRF value and purges ----------
def test_loopback_mode_refuses_a_foreign_host_name(
    buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    dead_letter(buffer, "m-1", "acme", "prod")
    # The default of `dramatiq-mollifier dashboard`: no token, no basic auth, loopback only
    with served(redis_client, redis_url, key_prefix, token=None) as server:
        port = port_of(server)
        # What a page of http://attacker.example:PORT sends once its name resolves to 127.0.0.1
        rebound = Http(port, host_header=f"attacker.example:{port}")
        status, _, page = rebound.request("GET", "/confirm?action=purge")
        posted = None
        if status == 200:
            form = forms_of(page)[0]
            posted = rebound.request("POST", form["action"], dict(form["fields"]))[0]
    left = len(buffer.failed())
    assert status in (400, 403) and left == 1, (
        f"Host attacker.example: GET {status}, POST purge {posted}, dead letters left {left}"
    )


# 4. Basic auth with a non-ASCII Authorization header: 500 -----------------------------------
def test_basic_auth_with_a_non_ascii_header_is_401_not_500(
    redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    with served(redis_client, redis_url, key_prefix, token=None, basic_auth=("ops", "s3cret")) as server:
        status, _, _ = Http(port_of(server)).request("GET", "/", headers={"Authorization": "Basic \xe9t\xe9"})
    assert status == 401, status


# 5. The confirmation page's "No, go back" goes wherever ?next= says ---------------------------
def test_the_confirmation_pages_back_link_stays_on_the_site(
    redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    with served(redis_client, redis_url, key_prefix) as server:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        _, _, page = Http(port_of(server)).request(
            "GET", "/confirm?action=purge&next=https://attacker.example/login", headers=bearer
        )
    back = unescape(re.search(r'<a href="([^"]*)">No, go back', page).group(1))
    assert not urllib.parse.urlsplit(back).netloc, f"back link leaves the site: {back}"


# 6. A session opened with a token outlives the token -----------------------------------------
def test_a_session_opened_with_an_old_token_is_refused_after_rotation(
    redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    secret = "one-secret-for-the-fleet"
    with served(
        redis_client, redis_url, key_prefix, token="old-token-0123456789", secret_key=secret
    ) as server:
        browser = Http(port_of(server))
        assert browser.request("GET", "/?token=old-token-0123456789")[0] == 303
        assert browser.request("GET", "/")[0] == 200
    # The operator rotates the token (the old one leaked); the fleet keeps its secret_key
    with served(
        redis_client, redis_url, key_prefix, token="new-token-0123456789", secret_key=secret
    ) as server:
        browser.port = port_of(server)
        status = browser.request("GET", "/")[0]
    assert status == 401, "the old token's session still opens the dashboard"


# 7. Loopback-only mode behind a same-host reverse proxy serves every client -------------------
@pytest.mark.parametrize(
    "relayed",
    [
        # Each alone, as one proxy or another sends it for a client at 203.0.113.9: waitress
        # dropped the first two before the app saw them, so an nginx setting only
        # X-Forwarded-For exposed purge to that client (found by a review; served with 200).
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Forwarded-Host": "dashboard.example.com"},
        {"X-Forwarded-Proto": "https"},
        {"X-Real-IP": "203.0.113.9"},
        {"Via": "1.1 proxy"},
    ],
    ids=lambda headers: next(iter(headers)),
)
def test_loopback_mode_refuses_a_request_relayed_by_a_proxy(
    redis_client: redis.Redis, redis_url: str, key_prefix: str, relayed: dict[str, str]
) -> None:
    with served(redis_client, redis_url, key_prefix, token=None) as server:
        http = Http(port_of(server))
        assert http.request("GET", "/")[0] == 200  # the same client, not relayed
        status = http.request("GET", "/", headers=relayed)[0]
    assert status == 403, f"a proxied remote client got {status}"


def test_a_confirmed_purge_of_one_org_never_purges_every_org(
    buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    dead_letter(buffer, "m-1", "acme", "prod")
    dead_letter(buffer, "m-2", "globex", "prod")
    with served(redis_client, redis_url, key_prefix) as server:
        browser = Http(port_of(server))
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        # A link someone pastes: the page lists "org:  " as the scope, not "everything"
        _, _, page = browser.request("GET", "/confirm?action=purge&org=%20", headers=bearer)
        assert "<li>everything</li>" not in page
        form = forms_of(page)[0]
        assert browser.request("POST", form["action"], dict(form["fields"]), bearer)[0] in (303, 400)
    assert len(buffer.failed()) == 2, f"left: {[e.message_id for e in buffer.failed()]}"


def test_a_post_to_a_page_is_405_not_the_csrf_check(
    redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    with served(redis_client, redis_url, key_prefix) as server:
        status = Http(port_of(server)).request(
            "POST", "/tenants", {}, headers={"Authorization": f"Bearer {TOKEN}"}
        )[0]
    assert status == 405


def test_the_chart_api_answers_redis_failures_in_json(
    redis_url: str, key_prefix: str, refused_url: str
) -> None:
    # A dashboard whose Redis refuses connections: the page's poll of /api/overview reads JSON
    settings = MollifierSettings(redis_url=refused_url, key_prefix=key_prefix)
    dash = create_app(settings=settings, token=TOKEN)
    try:
        with serve_wsgi(dash) as port:
            status, headers, body = Http(port).request(
                "GET", "/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}
            )
    finally:
        close_app(dash)
    assert status == 503 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"].startswith("Redis failed")


def test_reading_the_chart_never_waits_for_a_sample() -> None:
    # A depth read that hangs (a stalled Redis: a socket timeout) is the sampler thread's wait,
    # not the request's (the first sample was taken inline: /api/overview took two timeouts)
    release = threading.Event()
    series = DepthSeries(buffer_depth=lambda: int(release.wait(5)), broker_depth=None, interval_ms=100)
    try:
        started = time.monotonic()
        assert series.samples() == []
        assert time.monotonic() - started < 2.5
    finally:
        release.set()
        series.close()
