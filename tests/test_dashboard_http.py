"""The dashboard over real HTTP and a real Redis, without a browser: who may see it, who may act,
what its listings and chart read. The browser tests (test_dashboard_browser.py) drive the pages."""

from __future__ import annotations

import asyncio
import base64
import http.cookiejar
import logging
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.dashboard import create_app, create_asgi_app
from dramatiq_mollifier.dashboard.app import close_app
from dramatiq_mollifier.dashboard.broker_depth import broker_depth_reader
from dramatiq_mollifier.dashboard.series import DepthSeries
from dramatiq_mollifier.dashboard.serve import BackgroundServer, make_server
from dramatiq_mollifier.gate.flags import OrgFlags
from dramatiq_mollifier.models import EntryStatus
from dramatiq_mollifier.settings import MollifierSettings

from .cli_helpers import dead_letter
from .dashboard_helpers import TOKEN, fill, served


class Client:
    """A cookie-keeping HTTP client that never follows redirects."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.base = base
        self.headers = headers or {}

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect()
        )

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.base + path.lstrip("/"), data=data, headers=self.headers)
        try:
            with self.opener.open(req, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


COMMAND = (sys.executable, "-m", "dramatiq_mollifier")


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1)


def test_an_action_without_the_token_or_the_csrf_value_is_refused(
    buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    # Given a dead letter and a dashboard that asks for a token
    dead_letter(buffer, "m-1", "acme", "prod")
    with served(redis_client, redis_url, key_prefix) as server:
        anonymous = Client(server.url)
        bearer = Client(server.url, {"Authorization": f"Bearer {TOKEN}"})
        status, page = bearer.request("/dead-letters")
        assert status == 200 and "m-1" in page
        csrf = csrf_of(page)

        # Without the token: refused, even with a CSRF value
        assert anonymous.request("/")[0] == 401
        assert anonymous.request("/actions/retry", {"id": "m-1", "csrf_token": csrf})[0] == 401
        # With the token but without the CSRF value, or a wrong one: refused
        assert bearer.request("/actions/retry", {"id": "m-1"})[0] == 403
        assert bearer.request("/actions/retry", {"id": "m-1", "csrf_token": "x" + csrf})[0] == 403
        entry = buffer.get("m-1")
        assert entry is not None and entry.status is EntryStatus.FAILED

        # With both, the same request goes through
        status, _ = bearer.request(
            "/actions/retry", {"id": "m-1", "csrf_token": csrf, "next": "/dead-letters"}
        )
        assert status == 303
        entry = buffer.get("m-1")
        assert entry is not None and entry.status is EntryStatus.QUEUED


def test_a_token_opens_a_session_once_and_leaves_the_address(
    redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    with served(redis_client, redis_url, key_prefix) as server:
        browser = Client(server.url)
        assert browser.request(f"/tenants?token={'y' * 26}")[0] == 401
        # The right token: a redirect to the same page without it
        request = urllib.request.Request(f"{server.url}tenants?sort=depth&token={TOKEN}")
        with pytest.raises(urllib.error.HTTPError) as redirect:
            browser.opener.open(request, timeout=10)
        assert redirect.value.code == 303
        assert redirect.value.headers["Location"] == "/tenants?sort=depth"
        redirect.value.close()
        # The session cookie now stands for the token
        assert browser.request("/tenants?sort=depth")[0] == 200


def test_a_destructive_action_needs_its_confirmation(
    buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    dead_letter(buffer, "m-1", "acme", "prod")
    with served(redis_client, redis_url, key_prefix) as server:
        client = Client(server.url, {"Authorization": f"Bearer {TOKEN}"})
        status, page = client.request("/confirm?action=purge&org=acme")
        assert status == 200 and 'name="confirm" value="yes"' in page
        csrf = csrf_of(page)
        assert client.request("/actions/purge", {"org": "acme", "csrf_token": csrf})[0] == 400
        assert len(buffer.failed()) == 1
        assert (
            client.request("/actions/purge", {"org": "acme", "csrf_token": csrf, "confirm": "yes"})[0] == 303
        )
        assert buffer.failed() == []


def test_cancel_and_disenrol_go_through_their_confirmation(
    buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    ids = fill(buffer, [("acme", "prod", 3), ("acme", "dev", 2)])
    OrgFlags(redis_client, key_prefix=key_prefix).enable("acme")
    with served(redis_client, redis_url, key_prefix) as server:
        client = Client(server.url, {"Authorization": f"Bearer {TOKEN}"})
        # The lookup shows where a message waits
        status, page = client.request(f"/lookup?id={ids[1]}")
        assert status == 200 and 'id="f-position">1<' in page and 'id="f-status">QUEUED<' in page
        # Cancel one message: refused without the confirmation, done with it
        status, page = client.request(f"/confirm?action=cancel&id={ids[1]}")
        csrf = csrf_of(page)
        assert client.request("/actions/cancel", {"id": ids[1], "csrf_token": csrf})[0] == 400
        assert buffer.controls.lookup(ids[1]).state == "queued"
        form = {"id": ids[1], "csrf_token": csrf, "confirm": "yes"}
        assert client.request("/actions/cancel", form)[0] == 303
        assert buffer.controls.lookup(ids[1]).state == "absent"
        # Cancel a whole env
        form = {"org": "acme", "env": "dev", "csrf_token": csrf, "confirm": "yes"}
        assert client.request("/actions/cancel", form)[0] == 303
        assert buffer.depth("acme", "dev") == 0 and buffer.depth("acme", "prod") == 2
        # Disenrol needs the confirmation too
        assert client.request("/actions/enrol", {"org": "acme", "value": "off", "csrf_token": csrf})[0] == 400
        form = {"org": "acme", "value": "off", "csrf_token": csrf, "confirm": "yes"}
        assert client.request("/actions/enrol", form)[0] == 303
        assert OrgFlags(redis_client, key_prefix=key_prefix).all() == {"acme": False}


def test_without_token_or_basic_auth_only_loopback_clients_are_served(
    redis_url: str, key_prefix: str
) -> None:
    settings = MollifierSettings(redis_url=redis_url, key_prefix=key_prefix)
    app = create_app(settings=settings)
    client = app.test_client()
    assert client.get("/", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    assert client.get("/", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    assert client.get("/", environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 403
    opened = create_app(settings=settings, allow_remote_without_auth=True).test_client()
    assert opened.get("/", environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 200
    # Nor will it listen beyond loopback without one
    with pytest.raises(ValueError, match="without a token or basic auth"):
        make_server(app, host="0.0.0.0", port=0)


def test_basic_auth_is_checked(redis_url: str, key_prefix: str) -> None:
    settings = MollifierSettings(redis_url=redis_url, key_prefix=key_prefix)
    client = create_app(settings=settings, basic_auth=("ops", "s3cret")).test_client()

    def get(user_password: str) -> int:
        header = "Basic " + base64.b64encode(user_password.encode()).decode()
        return client.get("/", headers={"Authorization": header}).status_code

    assert client.get("/").status_code == 401
    assert get("ops:wrong") == 401
    assert get("ops:s3cret") == 200


@pytest.mark.parametrize("basic_auth", ["admin:s3cret-pass", ("ops",), ("ops", ""), ("ops", 7)])
def test_basic_auth_that_is_not_a_user_and_password_is_refused_at_startup(
    redis_url: str, basic_auth: Any
) -> None:
    # A string passed the check and was indexed: "admin:s3cret-pass" opened it to "a" and "d"
    with pytest.raises(ValueError, match="a \\(user, password\\) pair"):
        create_app(settings=MollifierSettings(redis_url=redis_url), basic_auth=basic_auth)


def test_a_short_token_is_refused_at_startup(redis_url: str) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        create_app(settings=MollifierSettings(redis_url=redis_url), token="short")


def test_the_asgi_app_serves_the_same_pages(buffer: MollifierBuffer, redis_url: str, key_prefix: str) -> None:
    fill(buffer, [("acme", "prod", 7)])
    app = create_asgi_app(settings=MollifierSettings(redis_url=redis_url, key_prefix=key_prefix))
    sent: list[dict[str, Any]] = []

    async def call() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/overview",
            "raw_path": b"/api/overview",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"localhost")],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    try:
        asyncio.run(call())
    finally:
        close_app(app.app)  # the chart's sampler, started by the overview's JSON
    assert sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b'"depth":7' in body.replace(b" ", b"")


def test_the_tenant_table_filters_sorts_and_pages(
    buffer: MollifierBuffer, redis_url: str, key_prefix: str
) -> None:
    fill(buffer, [(f"org-{n:03d}", "prod", 1 + n % 3) for n in range(120)])
    fill(buffer, [("needle", "eu", 9)])
    client = create_app(settings=MollifierSettings(redis_url=redis_url, key_prefix=key_prefix)).test_client()

    def rows(query: str) -> tuple[list[tuple[str, str, str]], str]:
        page = client.get(f"/tenants?{query}", environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_data(
            as_text=True
        )
        found = re.findall(
            r'<tr data-org="([^"]+)" data-env="([^"]+)">.*?<td class="num">([\d,]+)</td>', page, re.S
        )
        return found, page

    first, page = rows("")
    assert len(first) == 50
    assert first[0] == ("needle", "eu", "9")  # org order: "needle" < "org-000"
    assert [org for org, _, _ in first] == sorted(org for org, _, _ in first)
    assert "page 1 of 3" in page
    third, _ = rows("page=3")
    assert len(third) == 21
    by_depth, _ = rows("sort=depth")
    assert by_depth[0] == ("needle", "eu", "9")
    assert [int(depth) for _, _, depth in by_depth] == sorted((int(d) for _, _, d in by_depth), reverse=True)
    filtered, page = rows("q=needle")
    assert filtered == [("needle", "eu", "9")]
    assert "1 env match" in page


def test_the_chart_samples_buffer_and_broker_depth(
    buffer: MollifierBuffer, broker_url: str, key_prefix: str
) -> None:
    broker = RedisBroker(url=broker_url, namespace=f"{key_prefix}-broker")

    @dramatiq.actor(broker=broker, queue_name="work")
    def work() -> None:
        pass

    try:
        for _ in range(3):
            work.send()
        fill(buffer, [("acme", "prod", 4)])
        reader = broker_depth_reader(broker)
        assert reader is not None and reader() == 3
        series = DepthSeries(buffer_depth=buffer.depth, broker_depth=reader, interval_ms=100)
        try:
            deadline = time.monotonic() + 10
            while len(series.samples()) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            samples = series.samples()
        finally:
            series.close()
        assert len(samples) >= 3
        assert {(s.buffer_depth, s.broker_depth) for s in samples} == {(4, 3)}
        # Nobody reads it for as long as it spans: it stops polling Redis; a read restarts it
        idle = DepthSeries(buffer_depth=buffer.depth, interval_ms=100, points=3)
        try:
            idle.samples()
            assert idle.sampling
            deadline = time.monotonic() + 10
            while idle.sampling and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not idle.sampling
            idle.samples()
            assert idle.sampling
        finally:
            idle.close()
    finally:
        broker.close()


def test_a_redis_outage_is_a_503_page_not_a_crash(refused_url: str) -> None:
    client = redis.Redis.from_url(refused_url, socket_connect_timeout=1, socket_timeout=1)
    app = create_app(settings=MollifierSettings(redis_url=refused_url), client=client)
    response = app.test_client().get("/tenants", environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert response.status_code == 503
    assert "Redis failed" in response.get_data(as_text=True)


def test_a_served_dashboard_stops_when_its_trigger_pipe_is_gone(
    redis_client: redis.Redis, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = MollifierSettings(redis_url=redis_url, key_prefix=key_prefix)
    server = BackgroundServer(create_app(settings=settings, client=redis_client))
    with urllib.request.urlopen(server.url + "static/chart.js", timeout=10) as response:
        assert response.status == 200
    # What a full run once met: pulling the trigger fails with EBADF (here: a descriptor that is
    # no longer valid). Stop still ends the loop and closes the listening socket, and says so.
    trigger = server._server.trigger
    trigger.trigger = -1  # its pipe's own descriptors stay with it, closed by the stop below
    with caplog.at_level(logging.WARNING, logger="dramatiq_mollifier.dashboard.serve"):
        server.stop()
    assert not server._thread.is_alive()
    # (Its closed= field is not checked: whether the loop closed the trigger first is a race.)
    assert "mollifier.dashboard_stop_without_trigger" in caplog.text
    assert trigger._closed and not server._server._map
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=5)
