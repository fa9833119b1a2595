"""The operator commands of issue 14, in-process against a real Redis: show, cancel, pause,
resume, caps, weights, tenants; stats shows what is paused; failed list reads what it prints."""

from __future__ import annotations

import json

import pytest
import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.drain.cancel_check import CancelCheck
from dramatiq_mollifier.embedded import EmbeddedRedis

from .cli_helpers import dead_letter, run_cli
from .layout_helpers import command_calls


@pytest.fixture
def connection(redis_url: str, key_prefix: str) -> tuple[str, ...]:
    return ("--redis-url", redis_url, "--key-prefix", key_prefix)


def fill(buffer: MollifierBuffer, org: str, env: str, count: int) -> list[str]:
    ids = [f"{org}-{env}-{n}" for n in range(count)]
    for message_id in ids:
        assert buffer.accept(message_id, org_id=org, env_id=env, payload=b"x")
    return ids


def test_show_in_each_state(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    ids = fill(buffer, "acme", "prod", 3)
    DrainProtocol(buffer).pop("acme", "prod")
    dead_letter(buffer, "dead", "acme", "staging")

    queued = run_cli(capsys, "show", ids[2], *connection)
    assert queued.code == 0
    assert f"Message {ids[2]} is queued" in queued.out
    assert "position:  1 in its env's queue" in queued.out and "acme/prod" in queued.out
    assert "is draining" in run_cli(capsys, "show", ids[0], *connection).out
    dead = run_cli(capsys, "show", "dead", *connection)
    assert "dead-lettered" in dead.out and "ConnectionError: broker said no" in dead.out
    absent = run_cli(capsys, "show", "nope", *connection)
    assert absent.code == 1 and "not in the buffer" in absent.out

    data = json.loads(run_cli(capsys, "show", ids[1], "--json", *connection).out)
    assert (data["state"], data["position"], data["org_id"], data["env_id"]) == ("queued", 0, "acme", "prod")
    assert json.loads(run_cli(capsys, "show", "dead", "--json", *connection).out)["error"] == {
        "code": "ConnectionError",
        "message": "broker said no",
    }


def test_cancel_by_id_and_by_tenant(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    ids = fill(buffer, "acme", "prod", 3)
    fill(buffer, "acme", "dev", 4)
    fill(buffer, "globex", "prod", 2)

    one = run_cli(capsys, "cancel", ids[0], *connection)
    assert (one.code, one.out.strip()) == (0, "Cancelled 1 buffered message.")
    partly = run_cli(capsys, "cancel", ids[0], ids[1], *connection)
    assert partly.code == 1 and "Cancelled 1 buffered message." in partly.out
    assert "1 of 2 ids were not cancelled: 0 too late, 1 not buffered" in partly.err
    env = run_cli(capsys, "cancel", "--org", "acme", "--env", "dev", *connection)
    assert env.out.strip() == "Cancelled 4 buffered messages of acme/dev."
    org = run_cli(capsys, "cancel", "--org", "acme", *connection)
    assert org.out.strip() == "Cancelled 1 buffered message of acme (every env)."
    assert buffer.depth() == 2
    assert run_cli(capsys, "cancel", *connection).code == 2
    assert run_cli(capsys, "cancel", "x", "--org", "acme", *connection).code == 2


def test_cancel_says_which_ids_were_too_late(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    ids = fill(buffer, "acme", "prod", 3)
    check = CancelCheck(buffer.client, buffer.keys)
    (committed,) = DrainProtocol(buffer).pop_many("acme", "prod", 1)
    assert check(committed) is False  # its drainer is at its broker write

    result = run_cli(capsys, "cancel", *ids, *connection)
    assert result.code == 1
    assert result.out.splitlines() == [
        "Cancelled 2 buffered messages.",
        f"Too late: {ids[0]} (a drainer had already committed it to the broker)",
    ]
    assert "1 of 3 ids were not cancelled: 1 too late, 0 not buffered" in result.err
    assert buffer.controls.lookup(ids[0]).state == "draining"


def test_pause_resume_and_stats_shows_what_is_paused(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    fill(buffer, "acme", "prod", 3)
    fill(buffer, "globex", "prod", 1)

    paused = run_cli(capsys, "pause", "acme", *connection)
    assert paused.code == 0 and "Paused acme (every env): 3 buffered messages held" in paused.out
    assert "already paused" in run_cli(capsys, "pause", "acme", *connection).out
    assert run_cli(capsys, "pause", "globex", "--env", "prod", *connection).code == 0

    text = run_cli(capsys, "stats", *connection).out
    assert "Paused: acme (every env), globex/prod" in text
    assert any(
        line.split()[:3] == ["acme", "prod", "3"] and line.endswith("paused") for line in text.splitlines()
    )
    stats = json.loads(run_cli(capsys, "stats", "--json", *connection).out)
    assert stats["paused"] == [{"org_id": "acme", "env_id": None}, {"org_id": "globex", "env_id": "prod"}]
    assert {(e["org_id"], e["paused"]) for e in stats["envs"]} == {("acme", True), ("globex", True)}

    assert "Resumed acme (every env)" in run_cli(capsys, "resume", "acme", *connection).out
    assert "was not paused" in run_cli(capsys, "resume", "acme", *connection).out
    # Resuming an org whose env was paused on its own says that env is still paused
    resumed = run_cli(capsys, "resume", "globex", *connection)
    assert resumed.code == 0 and "globex (every env) was not paused" in resumed.out
    assert "Note: globex/prod is still paused, on its own ('resume globex --env prod')." in resumed.out
    assert json.loads(run_cli(capsys, "stats", "--json", *connection).out)["paused"] == [
        {"org_id": "globex", "env_id": "prod"}
    ]


def test_caps_and_weights_commands(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    assert "No runtime overrides." in run_cli(capsys, "caps", "list", *connection).out
    assert run_cli(capsys, "caps", "set", "acme", "500", *connection).out.strip() == (
        "Capped acme (every env) at 500 buffered messages."
    )
    assert run_cli(capsys, "caps", "set", "acme", "--env", "prod", "20", *connection).code == 0
    listing = run_cli(capsys, "caps", "list", *connection).out
    assert "Settings: none per env, none per org, overflow pass_through" in listing
    data = json.loads(run_cli(capsys, "caps", "list", "--json", *connection).out)
    assert data["overrides"] == [
        {"org_id": "acme", "env_id": None, "limit": 500},
        {"org_id": "acme", "env_id": "prod", "limit": 20},
    ]
    assert run_cli(capsys, "caps", "unset", "acme", "--env", "prod", *connection).code == 0
    assert buffer.controls.caps()[0].limit == 500 and len(buffer.controls.caps()) == 1
    assert run_cli(capsys, "caps", "set", "acme", "-1", *connection).code == 2

    assert run_cli(capsys, "weights", "list", *connection).out.strip() == "Every org has weight 1."
    assert run_cli(capsys, "weights", "set", "acme", "3", *connection).code == 0
    assert json.loads(run_cli(capsys, "weights", "list", "--json", *connection).out) == {"acme": 3}
    assert run_cli(capsys, "weights", "set", "acme", "0", *connection).code == 2
    assert run_cli(capsys, "weights", "unset", "acme", *connection).code == 0
    assert buffer.controls.weights() == {}


def test_tenants_pages_through_envs(
    capsys: pytest.CaptureFixture[str], buffer: MollifierBuffer, connection: tuple[str, ...]
) -> None:
    for n in range(5):
        fill(buffer, f"org{n}", "prod", n + 1)
    first = run_cli(capsys, "tenants", "--limit", "2", "--sort", "depth", *connection)
    lines = first.out.splitlines()
    assert lines[0].split()[:3] == ["ORG", "ENV", "DEPTH"]
    assert [line.split()[0] for line in lines[1:3]] == ["org4", "org3"]
    assert "(1-2 of 5;" in first.out
    page = json.loads(run_cli(capsys, "tenants", "--offset", "4", "--json", *connection).out)
    assert page["total"] == 5 and [r["org_id"] for r in page["rows"]] == ["org4"]


def test_failed_list_reads_only_the_entries_it_prints(
    capsys: pytest.CaptureFixture[str], disposable_redis: EmbeddedRedis
) -> None:
    # A server of its own: the session's shared one counts other tests' background reads too.
    redis_client = redis.Redis.from_url(disposable_redis.url)
    buffer = MollifierBuffer(redis_client)
    connection = ("--redis-url", disposable_redis.url)
    for n in range(60):
        dead_letter(buffer, f"dead-{n:02d}", f"org{n % 3}", "prod")

    def reads() -> int:
        return command_calls(redis_client, "hgetall", "hmget", "hget")

    before = reads()
    result = run_cli(capsys, "failed", "list", "--limit", "5", *connection)
    assert result.code == 0
    assert reads() - before == 5  # one read per printed entry, none of the 55 others
    assert "dead-00" in result.out and "... and 55 more" in result.out
    redis_client.close()


@pytest.mark.parametrize(
    "argv",
    [
        ("pause", ""),
        ("resume", ""),
        ("cancel", "--org", ""),
        ("cancel", "--org", "acme", "--env", ""),
        ("caps", "set", "", "5"),
        ("caps", "set", "acme", "2000000000"),
        ("weights", "set", "", "2"),
    ],
)
def test_a_bad_org_env_or_limit_is_a_usage_error_in_one_line(
    capsys: pytest.CaptureFixture[str], connection: tuple[str, ...], argv: tuple[str, ...]
) -> None:
    # A traceback and exit code 1 ("problem found") before
    result = run_cli(capsys, *argv, *connection)
    assert result.code == 2
    assert result.err.startswith("dramatiq-mollifier: error: ") and result.err.count("\n") == 1
