"""``dramatiq-mollifier dashboard``: the command serves the dashboard, with the settings,
secrets and broker queue it is given."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.embedded import EmbeddedRedis

from .cli_helpers import run_cli
from .dashboard_helpers import TOKEN, fill
from .mollifier_helpers import stop_process

COMMAND = (sys.executable, "-m", "dramatiq_mollifier")


def test_the_command_serves_the_dashboard(buffer: MollifierBuffer, redis_url: str, key_prefix: str) -> None:
    fill(buffer, [("acme", "prod", 12)])
    with subprocess.Popen(
        [*COMMAND, "dashboard", "--port", "0", "--redis-url", redis_url, "--key-prefix", key_prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        _check_served(process)


def test_the_command_takes_a_token_with_a_newline_and_the_brokers_own_url(
    buffer: MollifierBuffer, redis_url: str, key_prefix: str, disposable_redis: EmbeddedRedis
) -> None:
    # A token read from a secret file ends with a newline: it was kept, and the real token got
    # 401. --broker-queue read the queue on the buffer's Redis, whatever the broker's was.
    fill(buffer, [("acme", "prod", 12)])
    with redis.Redis.from_url(disposable_redis.url) as broker_redis:
        broker_redis.rpush("dramatiq:default", *[f"m{n}" for n in range(5)])
    command = [*COMMAND, "dashboard", "--port", "0", "--redis-url", redis_url, "--key-prefix", key_prefix]
    with subprocess.Popen(
        [*command, "--broker-queue", "default", "--broker-url", disposable_redis.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "MOLLIFIER_DASHBOARD_TOKEN": TOKEN + "\n"},
    ) as process:
        overview = _check_served(process, headers={"Authorization": f"Bearer {TOKEN}"})
    assert b'"broker_depth":5' in overview


def _check_served(process: subprocess.Popen[str], headers: dict[str, str] | None = None) -> bytes:
    try:
        assert process.stdout is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            match = re.search(r"Serving on (http://\S+)", line)
            url = match.group(1) if match else None
        assert url is not None, process.stderr.read() if process.poll() is not None else "no address printed"
        request = urllib.request.Request(url + "api/overview", headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as response:
            overview = response.read().replace(b" ", b"")
        assert b'"depth":12' in overview
        return overview
    finally:
        stop_process(process, 10)


def test_the_command_will_not_listen_beyond_loopback_without_auth(
    capsys: pytest.CaptureFixture[str], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOLLIFIER_DASHBOARD_TOKEN", raising=False)
    monkeypatch.delenv("MOLLIFIER_DASHBOARD_BASIC_AUTH", raising=False)
    result = run_cli(capsys, "dashboard", "--host", "0.0.0.0", "--port", "0", "--redis-url", redis_url)
    assert result.code == 2
    assert "without a token or basic auth" in result.err
