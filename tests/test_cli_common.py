"""What every command shares: errors, exit codes, help, and the real ``python -m`` entry point."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from dramatiq_mollifier import console
from dramatiq_mollifier.buffer.keys import KeySpace
from dramatiq_mollifier.cli import build_parser, common
from dramatiq_mollifier.embedded import free_port
from dramatiq_mollifier.errors import BufferUnavailableError

from .cli_helpers import run_cli

OPERATOR_COMMANDS = [
    ("stats",),
    ("orgs", "list"),
    ("orgs", "enable", "acme"),
    ("failed", "list"),
    ("failed", "retry", "--all"),
    ("failed", "purge", "--yes"),
]


@pytest.mark.parametrize("argv", OPERATOR_COMMANDS)
def test_an_unreachable_server_is_one_line_and_exit_3(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()

    result = run_cli(capsys, *argv, "--redis-url", url)

    assert result.code == 3
    assert time.monotonic() - started < console.CONNECT_TIMEOUT_S
    assert result.err.startswith(f"dramatiq-mollifier: error: cannot reach Redis at {url}")
    assert result.err.count("\n") == 1
    assert result.out == ""


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://localhost:6379/0", "expected a redis://"),
        ("redis://localhost:port/0", "bad port"),
        ("redis://localhost:99999/0", "bad port"),
        ("redis://localhost:6379/zero", "database 'zero' is not a number"),
        ("redis:///0", "no host"),
    ],
)
def test_a_bad_url_is_a_configuration_error(capsys: pytest.CaptureFixture[str], url: str, says: str) -> None:
    result = run_cli(capsys, "stats", "--redis-url", url)

    assert result.code == 2
    assert says in result.err
    assert result.err.count("\n") == 1


def test_an_invalid_setting_in_the_environment_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOLLIFIER_TRIP_THRESHOLD", "-5")

    result = run_cli(capsys, "stats", "--redis-url", "redis://127.0.0.1:1/0")

    assert result.code == 2
    assert "MOLLIFIER_TRIP_THRESHOLD" in result.err


def test_a_bad_key_prefix_is_a_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "stats", "--key-prefix", "has space", "--redis-url", "redis://127.0.0.1:1/0")

    assert result.code == 2
    assert "key_prefix" in result.err


def test_an_empty_key_prefix_is_refused_not_taken_for_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "stats", "--key-prefix", "", "--redis-url", "redis://127.0.0.1:1/0")

    assert result.code == 2
    assert "key_prefix" in result.err


def test_a_bad_url_error_never_shows_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "stats", "--redis-url", "redis://user:s3cret@localhost:6379/abc")

    assert result.code == 2
    assert "is not a number" in result.err
    assert "s3cret" not in result.err


def test_drain_reports_an_app_whose_import_raises_in_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = run_cli(capsys, "drain", "tests.apps.broken_app")

    assert result.code == 2
    assert "importing 'tests.apps.broken_app' raised RuntimeError" in result.err
    assert "missing DATABASE_URL" in result.err
    assert result.err.count("\n") == 1


def test_a_redis_failure_during_a_command_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    @common.command
    def failing(args: argparse.Namespace) -> int:
        raise BufferUnavailableError("connection reset by peer")

    assert failing(argparse.Namespace()) == 3
    assert "Redis failed during the command: connection reset by peer" in capsys.readouterr().err


@pytest.mark.redis
@pytest.mark.parametrize(
    "argv", [("stats",), ("pause", "acme"), ("show", "m1"), ("failed", "list"), ("tenants",)]
)
def test_a_buffer_written_with_another_key_layout_is_refused(
    capsys: pytest.CaptureFixture[str],
    redis_client: redis.Redis,
    redis_url: str,
    key_prefix: str,
    argv: tuple[str, ...],
) -> None:
    # The fleet runs with MOLLIFIER_SLOT_GROUPS set, the operator's shell without: stats said 0
    # buffered, show said "not in the buffer", and pause wrote a key the fleet never reads
    redis_client.set(KeySpace(key_prefix).layout, "slot_groups=5")

    result = run_cli(capsys, *argv, "--redis-url", redis_url, "--key-prefix", key_prefix)

    assert result.code == 2, result.err
    assert "was written with slot_groups=5" in result.err and "MOLLIFIER_SLOT_GROUPS" in result.err


def test_redact_url_hides_only_the_password() -> None:
    assert console.redact_url("redis://u:pw@h:6379/1") == "redis://u:***@h:6379/1"
    assert console.redact_url("rediss://:pw@h/0") == "rediss://:***@h/0"
    assert console.redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_format_table_aligns_numbers_right() -> None:
    table = console.format_table(("NAME", "N"), [("a", 1), ("bbbb", 12_345)])

    assert table.splitlines() == ["NAME       N", "a          1", "bbbb  12,345"]


@pytest.mark.parametrize("name", ["stats", "orgs", "failed", "demo"])
def test_every_command_has_help_with_examples_and_exit_codes(name: str) -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = subparsers.choices[name].format_help()

    assert "examples:" in text
    assert f"dramatiq-mollifier {name}" in text
    assert "exit codes:" in text


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "failed", "--help")

    assert exit_info.value.code == 0
    assert "dead letters" in capsys.readouterr().out


def test_the_module_entry_point_and_its_exit_codes(redis_url: str, key_prefix: str) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dramatiq_mollifier", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = cli("stats", "--json", "--redis-url", redis_url, "--key-prefix", key_prefix)
    unreachable = cli("stats", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    usage = cli("failed", "purge", "--redis-url", redis_url)
    unknown = cli("no-such-command")

    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["depth"] == 0
    assert unreachable.returncode == 3
    assert "cannot reach Redis" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert usage.returncode == 2
    assert unknown.returncode == 2


def test_cli_common_keeps_only_what_is_particular_to_the_cli() -> None:
    # Exit codes, connecting, tables live in console (shared with the demo); no second home here.
    assert not set(common.__all__) & set(console.__all__)
    cli = Path(common.__file__).parent
    through_common = [
        f"{path.name}: common.{name}"
        for path in sorted(cli.glob("*.py"))
        for name in console.__all__
        if re.search(rf"\bcommon\.{name}\b", path.read_text(encoding="utf-8"))
    ]
    assert through_common == []
