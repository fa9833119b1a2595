"""``dramatiq-mollifier failed list|retry|purge`` against a real server."""

from __future__ import annotations

import json

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.models import EntryStatus

from .cli_helpers import dead_letter, run_cli


@pytest.fixture
def buffer(redis_client: redis.Redis, key_prefix: str) -> MollifierBuffer:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    dead_letter(buffer, "a1", "acme", "prod")
    dead_letter(buffer, "a2", "acme", "staging")
    dead_letter(buffer, "g1", "globex", "prod")
    return buffer


@pytest.fixture
def connection(redis_url: str, key_prefix: str) -> tuple[str, ...]:
    return ("--redis-url", redis_url, "--key-prefix", key_prefix)


def failed_ids(buffer: MollifierBuffer) -> set[str]:
    return {entry.message_id for entry in buffer.failed()}


def test_list_shows_every_dead_letter_with_its_error(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    result = run_cli(capsys, "failed", "list", *connection)

    assert result.code == 0, result.err
    rows = [line.split()[:3] for line in result.out.splitlines()[1:]]
    assert sorted(rows) == [["a1", "acme", "prod"], ["a2", "acme", "staging"], ["g1", "globex", "prod"]]
    assert "ConnectionError: broker said no" in result.out


def test_list_json_parses_and_filters_by_org_and_env(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    by_org = json.loads(run_cli(capsys, "failed", "list", "--org", "acme", "--json", *connection).out)
    by_env = json.loads(
        run_cli(capsys, "failed", "list", "--org", "acme", "--env", "prod", "--json", *connection).out
    )

    assert {e["message_id"] for e in by_org} == {"a1", "a2"}
    assert [e["message_id"] for e in by_env] == ["a1"]
    assert by_env[0]["error_code"] == "ConnectionError"
    assert by_env[0]["error_message"] == "broker said no"
    assert by_env[0]["payload_bytes"] == len(b"payload")


def test_list_of_nothing(capsys: pytest.CaptureFixture[str], connection: tuple[str, ...]) -> None:
    assert "No dead letters." in run_cli(capsys, "failed", "list", *connection).out
    assert json.loads(run_cli(capsys, "failed", "list", "--json", *connection).out) == []


def test_list_limit_says_how_many_more(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    result = run_cli(capsys, "failed", "list", "--limit", "1", *connection)

    assert len(result.out.splitlines()) == 3
    assert "and 2 more" in result.out


def test_retry_by_id_puts_the_entry_back_in_its_queue(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    result = run_cli(capsys, "failed", "retry", "a1", *connection)

    assert result.code == 0, result.err
    assert failed_ids(buffer) == {"a2", "g1"}
    entry = buffer.get("a1")
    assert entry is not None and entry.status is EntryStatus.QUEUED
    assert buffer.depth("acme", "prod") == 1
    popped = DrainProtocol(buffer).pop("acme", "prod")
    assert popped is not None and popped.message_id == "a1"


def test_retry_of_an_unknown_id_fails_but_retries_the_others(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    result = run_cli(capsys, "failed", "retry", "nope", "g1", *connection)

    assert result.code == 1
    assert "no dead letter with id 'nope'" in result.err
    assert "Retried 1 dead letter" in result.out
    assert failed_ids(buffer) == {"a1", "a2"}


def test_retry_of_a_queued_entry_is_refused(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    buffer.accept("live", org_id="acme", env_id="prod", payload=b"x")

    result = run_cli(capsys, "failed", "retry", "live", *connection)

    assert result.code == 1
    assert buffer.depth("acme", "prod") == 1


def test_retry_all_of_an_org(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    result = run_cli(capsys, "failed", "retry", "--all", "--org", "acme", *connection)

    assert result.code == 0, result.err
    assert "Retried 2 dead letters" in result.out
    assert failed_ids(buffer) == {"g1"}
    assert buffer.depth("acme") == 2


def test_retry_all(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    result = run_cli(capsys, "failed", "retry", "--all", *connection)

    assert result.code == 0, result.err
    assert failed_ids(buffer) == set()
    assert buffer.depth() == 3


@pytest.mark.parametrize(
    "argv",
    [
        ("failed", "retry"),
        ("failed", "retry", "a1", "--all"),
        ("failed", "retry", "a1", "--org", "acme"),
        ("failed", "list", "--env", "prod"),
        ("failed", "list", "--limit", "0"),
        ("failed", "purge"),
        ("failed", "purge", "--env", "prod", "--yes"),
    ],
)
def test_usage_errors_exit_2_and_change_nothing(
    capsys: pytest.CaptureFixture[str],
    buffer: MollifierBuffer,
    connection: tuple[str, ...],
    argv: tuple[str, ...],
) -> None:
    result = run_cli(capsys, *argv, *connection)

    assert result.code == 2
    assert result.err.startswith("dramatiq-mollifier: error: ")
    assert failed_ids(buffer) == {"a1", "a2", "g1"}


def test_purge_an_env(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    result = run_cli(capsys, "failed", "purge", "--org", "acme", "--env", "staging", *connection)

    assert result.code == 0, result.err
    assert "Purged 1 dead letter." in result.out
    assert failed_ids(buffer) == {"a1", "g1"}
    assert buffer.get("a2") is None


def test_purge_an_org(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    result = run_cli(capsys, "failed", "purge", "--org", "acme", *connection)

    assert "Purged 2 dead letters." in result.out
    assert failed_ids(buffer) == {"g1"}


def test_purge_everything_needs_yes(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    buffer.accept("live", org_id="acme", env_id="prod", payload=b"x")

    result = run_cli(capsys, "failed", "purge", "--yes", *connection)

    assert result.code == 0, result.err
    assert "Purged 3 dead letters." in result.out
    assert failed_ids(buffer) == set()
    assert buffer.depth() == 1  # queued work is not a dead letter


def test_retrying_one_dead_letter_named_twice_retries_it_once_without_an_error(
    capsys: pytest.CaptureFixture[str], redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    dead_letter(buffer, "a1", "acme", "prod")

    result = run_cli(
        capsys, "failed", "retry", "a1", "a1", "--redis-url", redis_url, "--key-prefix", key_prefix
    )

    # It said "no dead letter with id 'a1'" for the second and exited 1
    assert "Retried 1 dead letter:" in result.out
    assert (result.code, result.err) == (0, "")
