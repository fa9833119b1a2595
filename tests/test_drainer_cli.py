"""``dramatiq-mollifier drain APP``: the standalone drainer process, run for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer

from .conftest import CLUSTER_MODE
from .mollifier_helpers import eventually, exit_code

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
# RedisBroker's hash of the messages on the app's queue (namespace "dramatiq", queue "e2e").
QUEUE_MESSAGES = "dramatiq:e2e.msgs"


def drain_command(*args: str, env: dict[str, str] | None = None, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dramatiq_mollifier", "drain", *args],
            cwd=REPO,
            env=env or dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def environment(redis_url: str, broker_url: str, key_prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "E2E_REDIS_URL": broker_url,
        "MOLLIFIER_ENABLED": "true",
        "MOLLIFIER_REDIS_URL": redis_url,
        "MOLLIFIER_KEY_PREFIX": key_prefix,
        # Workers of such a deployment drain nothing; the standalone drainer runs regardless.
        "MOLLIFIER_DRAINER_ENABLED": "false",
        "MOLLIFIER_DRAIN_POLL_INTERVAL_MS": "20",
        # No worker consumes here, so no budget slot is freed: a fixed budget above the backlog.
        "MOLLIFIER_DRAIN_TARGET_WAIT_MS": "0",
        "MOLLIFIER_DRAIN_SHUTDOWN_TIMEOUT_MS": "2000",
    }


def test_drain_puts_the_buffer_on_the_broker_and_stops_cleanly_on_sigterm(
    environment: dict[str, str],
    redis_client: redis.Redis,
    broker_client: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    for n in range(50):
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name="e2e", actor_name="record", args=(n,), kwargs={}, options={}
        )
        buffer.accept(message.message_id, org_id=f"org{n % 5}", env_id="prod", payload=message.encode())
    process = drain_command("tests.apps.drain_app", env=environment, log=tmp_path / "drain.log")
    try:
        # The broker write comes before the ack: wait for both, then check both.
        eventually(lambda: broker_client.hlen(QUEUE_MESSAGES) >= 50 and buffer.depth() == 0, 20, "the drain")
        assert broker_client.hlen(QUEUE_MESSAGES) == 50
        assert buffer.depth() == 0
        if not CLUSTER_MODE:
            # The broker on the buffer's database: the chunks moved inside Redis, as a worker's
            # drainer moves them (the move's redis_message_id is the message id and a time;
            # RedisBroker.enqueue gives a uuid4), the app's Mollifier the only enqueue hook.
            bodies = [json.loads(body) for body in broker_client.hvals(QUEUE_MESSAGES)]
            assert all(
                body["options"]["redis_message_id"].startswith(body["message_id"] + "-") for body in bodies
            )

        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, (tmp_path / "drain.log").read_text()[-3000:]
        # The drainer's deadline is 2 s; interpreter exit on a loaded machine gets 2 s more.
        assert time.monotonic() - began < 4.0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = (tmp_path / "drain.log").read_text()
    assert "mollifier.drainer started" in output
    assert "mollifier.drainer stopped" in output


def test_drain_refuses_an_app_without_the_mollifier(tmp_path: Path) -> None:
    process = drain_command("tests.apps.plain_app", log=tmp_path / "drain.log")

    assert exit_code(process, 30) == 2
    output = (tmp_path / "drain.log").read_text()
    assert "has no Mollifier middleware" in output


def test_drain_reports_an_app_that_cannot_be_imported(tmp_path: Path) -> None:
    process = drain_command("tests.apps.no_such_app", log=tmp_path / "drain.log")

    assert exit_code(process, 30) == 2
    assert "cannot import 'tests.apps.no_such_app'" in (tmp_path / "drain.log").read_text()


def test_drain_fails_loudly_on_a_bad_setting(environment: dict[str, str], tmp_path: Path) -> None:
    bad = {**environment, "MOLLIFIER_DRAIN_SHUTDOWN_TIMEOUT_MS": "700000"}
    process = drain_command("tests.apps.drain_app", env=bad, log=tmp_path / "drain.log")

    assert exit_code(process, 30) == 2
    assert "drain_shutdown_timeout_ms" in (tmp_path / "drain.log").read_text()
