"""The README's quickstart is real code: it runs here against the test's Redis."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

import dramatiq_mollifier

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's quickstart has no python block"
    return match.group(1)


def test_readme_quickstart_runs_and_diverts_a_burst(
    redis_url: str, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the quickstart, pointed at this test's servers for the broker and the buffer (one and
    # the same on one server; the buffer on the cluster in the cluster pass)
    monkeypatch.setenv("MOLLIFIER_REDIS_URL", redis_url)
    # A window wide enough that a slow machine still sends the burst within one window.
    monkeypatch.setenv("MOLLIFIER_TRIP_WINDOW_MS", "60000")
    code = quickstart_code().replace("redis://localhost:6379/0", broker_url)
    previous = dramatiq.get_broker()
    namespace: dict[str, Any] = {}
    try:
        # When it runs (it sends one message for acme/prod)
        exec(compile(code, str(README), "exec"), namespace)
        broker = namespace["broker"]
        ingest = namespace["ingest"]
        # and acme/prod bursts past the default threshold of 100 within one window
        messages = [
            ingest.send_with_options(args=({"n": n},), org_id="acme", env_id="prod") for n in range(149)
        ]
    finally:
        dramatiq.set_broker(previous)

    # Then every send returned a Message, and what went over the threshold sits in the buffer
    assert all(isinstance(message, dramatiq.Message) for message in messages)
    mollifier = next(m for m in broker.middleware if type(m).__name__ == "Mollifier")
    client = redis.Redis.from_url(broker_url)
    try:
        on_broker = client.hlen("dramatiq:default.msgs")
    finally:
        client.close()
    buffered = mollifier.buffer.depth("acme", "prod")
    assert on_broker + buffered == 150
    assert on_broker == 100
    assert buffered == 50
    broker.close()


def test_the_readme_layout_names_every_module_where_it_lives() -> None:
    # The layout table must follow the tree: a module added, moved or renamed shows here.
    text = README.read_text(encoding="utf-8")
    table = text.split("| layer | where | what |", 1)[1].split("\n\n", 1)[0]
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in table.splitlines()[2:]}
    package = Path(dramatiq_mollifier.__file__).parent
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if path.name in ("__init__.py", "__main__.py", "_version.py") or (
            relative.parts[0] == "cli" and path.name != "common.py"  # one module per command
        ):
            continue
        folder = f"`{relative.parts[0]}/`" if len(relative.parts) > 1 else None
        cells = [cell for cell in rows.values() if folder is None or folder in cell]
        if not any(f"`{path.name}`" in cell for cell in cells):
            missing.append(str(relative))
    for lua in sorted(package.rglob("lua")):
        if not any(f"`{lua.parent.name}/`" in cell and "`lua/`" in cell for cell in rows.values()):
            missing.append(str(lua.relative_to(package)))
    assert missing == []
