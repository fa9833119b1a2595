"""``dramatiq-mollifier orgs`` against a real server: the flags the running gate reads."""

from __future__ import annotations

import json

import pytest
import redis

from dramatiq_mollifier.gate.flags import OrgFlags

from .cli_helpers import run_cli


@pytest.fixture
def connection(redis_url: str, key_prefix: str) -> tuple[str, ...]:
    return ("--redis-url", redis_url, "--key-prefix", key_prefix)


@pytest.fixture(autouse=True)
def no_static_orgs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOLLIFIER_ENABLED_ORGS", raising=False)


def test_enable_sets_the_runtime_flag_the_gate_reads(
    capsys: pytest.CaptureFixture[str],
    redis_client: redis.Redis,
    key_prefix: str,
    connection: tuple[str, ...],
) -> None:
    result = run_cli(capsys, "orgs", "enable", "acme", "globex", *connection)

    assert result.code == 0, result.err
    assert OrgFlags(redis_client, key_prefix=key_prefix).all() == {"acme": True, "globex": True}
    assert "acme: runtime flag on" in result.out


@pytest.mark.parametrize("org", ["*", "acme,globex"])
def test_enable_refuses_what_is_not_one_org_id(
    capsys: pytest.CaptureFixture[str],
    redis_client: redis.Redis,
    key_prefix: str,
    connection: tuple[str, ...],
    org: str,
) -> None:
    # Each was stored as the flag of an org nobody has, printed "(enrolled)", and enrolled nobody
    result = run_cli(capsys, "orgs", "enable", org, *connection)

    assert result.code == 2
    assert "is not one org id" in result.err
    assert OrgFlags(redis_client, key_prefix=key_prefix).all() == {}


def test_disable_turns_the_flag_off(
    capsys: pytest.CaptureFixture[str],
    redis_client: redis.Redis,
    key_prefix: str,
    connection: tuple[str, ...],
) -> None:
    run_cli(capsys, "orgs", "enable", "acme", *connection)

    result = run_cli(capsys, "orgs", "disable", "acme", *connection)

    assert result.code == 0, result.err
    assert OrgFlags(redis_client, key_prefix=key_prefix).all() == {"acme": False}


def test_disable_of_an_org_never_seen_records_it_as_off(
    capsys: pytest.CaptureFixture[str],
    redis_client: redis.Redis,
    key_prefix: str,
    connection: tuple[str, ...],
) -> None:
    result = run_cli(capsys, "orgs", "disable", "never-heard-of", *connection)

    assert result.code == 0, result.err
    assert OrgFlags(redis_client, key_prefix=key_prefix).all() == {"never-heard-of": False}


def test_disable_warns_when_the_static_setting_still_enrols_the_org(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, connection: tuple[str, ...]
) -> None:
    monkeypatch.setenv("MOLLIFIER_ENABLED_ORGS", "acme")

    result = run_cli(capsys, "orgs", "disable", "acme", *connection)

    assert "still enrolled by MOLLIFIER_ENABLED_ORGS" in result.out


def test_reset_removes_the_flag(
    capsys: pytest.CaptureFixture[str],
    redis_client: redis.Redis,
    key_prefix: str,
    connection: tuple[str, ...],
) -> None:
    run_cli(capsys, "orgs", "enable", "acme", *connection)

    result = run_cli(capsys, "orgs", "reset", "acme", "unknown", *connection)

    assert result.code == 0, result.err
    assert OrgFlags(redis_client, key_prefix=key_prefix).all() == {}
    assert "acme: runtime flag removed" in result.out
    assert "unknown: had no runtime flag" in result.out


def test_list_shows_flags_static_orgs_and_enrolment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, connection: tuple[str, ...]
) -> None:
    monkeypatch.setenv("MOLLIFIER_ENABLED_ORGS", "initech")
    run_cli(capsys, "orgs", "enable", "acme", *connection)
    run_cli(capsys, "orgs", "disable", "globex", *connection)

    result = run_cli(capsys, "orgs", "list", *connection)

    assert result.code == 0, result.err
    rows = {line.split()[0]: line.split()[1:] for line in result.out.splitlines()[1:]}
    assert rows == {
        "acme": ["on", "no", "yes"],
        "globex": ["off", "no", "no"],
        "initech": ["-", "yes", "yes"],
    }


def test_list_json_parses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, connection: tuple[str, ...]
) -> None:
    monkeypatch.setenv("MOLLIFIER_ENABLED_ORGS", "*")
    run_cli(capsys, "orgs", "disable", "globex", *connection)

    result = run_cli(capsys, "orgs", "list", "--json", *connection)

    data = json.loads(result.out)
    assert data["all_orgs_enrolled"] is True
    assert data["orgs"] == [{"org_id": "globex", "flag": False, "static": True, "enrolled": True}]


def test_list_when_nothing_is_set(capsys: pytest.CaptureFixture[str], connection: tuple[str, ...]) -> None:
    result = run_cli(capsys, "orgs", "list", *connection)

    assert result.code == 0
    assert "No runtime flags" in result.out


def test_list_reads_a_hand_written_invalid_flag_as_off(
    capsys: pytest.CaptureFixture[str],
    redis_client: redis.Redis,
    key_prefix: str,
    connection: tuple[str, ...],
) -> None:
    # Strict parsing: only "true" enables; "False", "yes", "1" do not.
    redis_client.hset(OrgFlags(redis_client, key_prefix=key_prefix).key, "acme", "yes")

    result = run_cli(capsys, "orgs", "list", "--json", *connection)

    assert json.loads(result.out)["orgs"][0]["enrolled"] is False


def test_an_empty_org_id_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], connection: tuple[str, ...]
) -> None:
    result = run_cli(capsys, "orgs", "enable", "", *connection)

    assert result.code == 2
    assert "org id" in result.err


def test_orgs_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "orgs")

    assert exit_info.value.code == 2
