"""``dramatiq-mollifier stats`` against a real server."""

from __future__ import annotations

import json

import pytest

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol

from .cli_helpers import dead_letter, run_cli


def fill(buffer: MollifierBuffer) -> None:
    for i in range(3):
        buffer.accept(f"acme-prod-{i}", org_id="acme", env_id="prod", payload=b"x")
    buffer.accept("acme-staging-0", org_id="acme", env_id="staging", payload=b"x")
    buffer.accept("globex-0", org_id="globex", env_id="default", payload=b"x")
    dead_letter(buffer, "dead-1", "globex", "eu")


def test_stats_of_an_empty_buffer(
    capsys: pytest.CaptureFixture[str], redis_url: str, key_prefix: str
) -> None:
    result = run_cli(capsys, "stats", "--redis-url", redis_url, "--key-prefix", key_prefix)

    assert result.code == 0, result.err
    assert "buffered messages: 0" in result.out
    assert "Tripped now: none" in result.out
    assert "Dead letters: 0" in result.out


def test_stats_shows_depth_and_age_per_org_and_env(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, redis_url: str, key_prefix: str
) -> None:
    fill(buffer)

    result = run_cli(capsys, "stats", "--redis-url", redis_url, "--key-prefix", key_prefix)

    assert result.code == 0, result.err
    assert "buffered messages: 5" in result.out
    lines = [line.split() for line in result.out.splitlines()]
    assert any(line[:3] == ["acme", "prod", "3"] for line in lines)
    assert any(line[:3] == ["acme", "staging", "1"] for line in lines)
    assert any(line[:3] == ["globex", "default", "1"] for line in lines)
    assert "Dead letters: 1" in result.out
    assert any(line == ["globex", "eu", "1"] for line in lines)


def test_stats_json_parses_and_carries_every_number(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, redis_url: str, key_prefix: str
) -> None:
    fill(buffer)

    result = run_cli(capsys, "stats", "--json", "--redis-url", redis_url, "--key-prefix", key_prefix)

    assert result.code == 0, result.err
    stats = json.loads(result.out)
    assert stats["depth"] == 5
    assert stats["key_prefix"] == key_prefix
    envs = {(e["org_id"], e["env_id"]): e for e in stats["envs"]}
    assert envs[("acme", "prod")]["depth"] == 3
    assert envs[("acme", "prod")]["oldest_age_ms"] >= 0
    assert set(envs) == {("acme", "prod"), ("acme", "staging"), ("globex", "default")}
    assert stats["failed"] == 1
    assert stats["failed_by_env"] == [{"org_id": "globex", "env_id": "eu", "count": 1}]
    assert stats["tripped"] == []


def test_stats_lists_tripped_envs(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, redis_url: str, key_prefix: str
) -> None:
    # Given an env pushed over a threshold of 0: its trip marker lives for the hold.
    buffer.evaluate_trip("acme", "prod", window_ms=10_000, threshold=0, hold_ms=60_000)
    buffer.evaluate_trip("acme", "prod", window_ms=10_000, threshold=0, hold_ms=60_000)

    text = run_cli(capsys, "stats", "--redis-url", redis_url, "--key-prefix", key_prefix)
    data = run_cli(capsys, "stats", "--json", "--redis-url", redis_url, "--key-prefix", key_prefix)

    assert "Tripped now: acme/prod" in text.out
    assert json.loads(data.out)["tripped"] == [{"org_id": "acme", "env_id": "prod"}]


def test_stats_for_one_org(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, redis_url: str, key_prefix: str
) -> None:
    fill(buffer)

    result = run_cli(
        capsys, "stats", "--org", "acme", "--json", "--redis-url", redis_url, "--key-prefix", key_prefix
    )

    stats = json.loads(result.out)
    assert stats["depth"] == 4
    assert {e["org_id"] for e in stats["envs"]} == {"acme"}
    assert stats["failed"] == 0


def test_stats_reads_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    buffer: MollifierBuffer,
    redis_url: str,
    key_prefix: str,
) -> None:
    fill(buffer)
    monkeypatch.setenv("MOLLIFIER_REDIS_URL", redis_url)
    monkeypatch.setenv("MOLLIFIER_KEY_PREFIX", key_prefix)

    result = run_cli(capsys, "stats", "--json")

    assert json.loads(result.out)["depth"] == 5


def test_flags_override_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    buffer: MollifierBuffer,
    redis_url: str,
    key_prefix: str,
) -> None:
    fill(buffer)
    monkeypatch.setenv("MOLLIFIER_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("MOLLIFIER_KEY_PREFIX", "someone-else")

    result = run_cli(capsys, "stats", "--json", "--redis-url", redis_url, "--key-prefix", key_prefix)

    assert result.code == 0, result.err
    assert json.loads(result.out)["depth"] == 5


def test_stats_never_prints_a_password(
    capsys: pytest.CaptureFixture[str], redis_url: str, key_prefix: str
) -> None:
    # The test server has no password, so AUTH fails: the error names the URL, but not the secret.
    url = redis_url.replace("://", "://user:s3cret@", 1)

    result = run_cli(capsys, "stats", "--json", "--redis-url", url, "--key-prefix", key_prefix)

    assert result.code == 3
    assert "://user:***@" in result.err
    assert "s3cret" not in result.out + result.err


def test_stats_lists_an_env_whose_entries_are_all_draining(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, redis_url: str, key_prefix: str
) -> None:
    # Its rows walked the envs with QUEUED work: an env all popped vanished, and the rows did
    # not add up to the depth they sit under.
    for n in range(3):
        buffer.accept(f"a{n}", org_id="acme", env_id="a", payload=b"x")
        buffer.accept(f"b{n}", org_id="acme", env_id="b", payload=b"x")
    assert len(DrainProtocol(buffer).pop_many("acme", "a", 10)) == 3

    for org in ([], ["--org", "acme"]):
        result = run_cli(
            capsys, "stats", "--json", *org, "--redis-url", redis_url, "--key-prefix", key_prefix
        )
        assert result.code == 0, result.err
        stats = json.loads(result.out)
        assert stats["depth"] == 6
        assert [(e["env_id"], e["depth"]) for e in stats["envs"]] == [("a", 3), ("b", 3)]
