"""``dramatiq-mollifier demo --dashboard``: the page is up while the burst is smoothed."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dramatiq_mollifier.embedded import free_port

from .cli_helpers import run_cli


@pytest.mark.single_server(reason="the demo puts its RedisBroker and the buffer on the server it is given")
def test_the_demo_serves_the_dashboard_while_the_burst_is_smoothed(
    capsys: pytest.CaptureFixture[str], redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        # What a newcomer's open page reads, every 100 ms, from the moment it answers.
        while not done.wait(0.1):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=5) as response:
                    seen.append(int(json.loads(response.read())["depth"]))
            except (urllib.error.URLError, ConnectionError):
                continue

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_cli(
            capsys, "demo", "--quick", "--no-png", "--redis-url", redis_url, "--dashboard", str(port)
        )
    finally:
        done.set()
        watcher.join(timeout=10)
    assert result.code == 0, result.out + result.err
    assert f"dashboard http://127.0.0.1:{port}/" in result.out
    # The page was up before the burst (depth 0) and showed it buffered
    assert seen and seen[0] == 0
    assert max(seen) > 0
    # And it is down once the demo is over
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
