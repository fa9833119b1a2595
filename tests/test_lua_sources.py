"""The Lua sources: every script documents its keys and arguments, builds no key names, and gets
the shared helpers it calls. Files only, no server."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from dramatiq_mollifier.buffer.scripts import SCRIPT_NAMES, script_source


def lua_file(name: str) -> str:
    path = resources.files("dramatiq_mollifier.buffer") / "lua" / f"{name}.lua"
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_script_documents_the_keys_and_args_it_uses(name: str) -> None:
    text = lua_file(name)
    header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    assert text.startswith(f"-- {name}:")
    assert "Returns" in header
    for kind in ("KEYS", "ARGV"):
        for index in set(re.findall(rf"{kind}\[(\d+)\]", body)):
            assert re.search(rf"{kind}\[{index}\]|{kind}\[\d+\.\.\]", header), f"{kind}[{index}] of {name}"


# The only helpers that compose strings: hash fields and sorted-set members (tenant_member: the
# listing indexes' members), and move.lua's message for the broker, its id and the claim's
# placeholders: never key names.
FIELD_BUILDERS = ("tenant_tag", "org_field", "env_field", "lease_field", "tenant_member")
VALUE_BUILDERS = ("drained_message", "broker_message_id", "claim_placeholders")


@pytest.mark.parametrize("name", [*SCRIPT_NAMES, "_lib"])
def test_no_script_builds_key_names_or_scans(name: str) -> None:
    code = "\n".join(line.split("--")[0] for line in lua_file(name).splitlines())
    assert not re.search(r"'(KEYS|SCAN)'", code, re.IGNORECASE)
    # String concatenation is how a script would build a key name: only the field builders
    # concatenate, and what they build is never the key argument of a command.
    for builder in (*FIELD_BUILDERS, *VALUE_BUILDERS):
        code = re.sub(rf"local function {builder}\(.*?\nend\n", "", code, flags=re.DOTALL)
    assert ".." not in code
    assert "string.format('%s" not in code
    assert not re.search(rf"redis\.call\('\w+', ({'|'.join((*FIELD_BUILDERS, *VALUE_BUILDERS))})\(", code)


def test_script_source_puts_the_shared_helpers_first() -> None:
    text = script_source("accept")
    assert text.index("local function adjust_depth") < text.index("-- accept:")
    with pytest.raises(ValueError, match="unknown script"):
        script_source("nope")


def test_a_script_gets_the_helpers_it_calls_and_only_those() -> None:
    def helpers(name: str) -> list[str]:
        return re.findall(r"^local function (\w+)\(", script_source(name), re.MULTILINE)

    # adjust_depth calls adjust_counter, org_field and env_field, which calls tenant_tag; index_env
    # calls index_depth (tenant_member, env_field) and index_head; each comes before its callers
    assert helpers("accept") == [
        "now_ms",
        "tenant_tag",
        "org_field",
        "env_field",
        "adjust_counter",
        "adjust_depth",
        "tenant_member",
        "index_depth",
        "index_head",
        "index_env",
        "wake_idle_drainer",
        "note_queued",
    ]
    assert helpers("expired_leases") == ["now_ms"]
    # the enqueue hot paths define next to nothing on each run (note_queued: the one place where
    # the buffer going from no queued work to some wakes an idle drainer)
    assert helpers("evaluate_trip") == ["tenant_tag", "env_field"]
    assert helpers("evaluate_trip_and_accept") == [
        "tenant_tag",
        "org_field",
        "env_field",
        "tenant_member",
        "wake_idle_drainer",
        "note_queued",
    ]
