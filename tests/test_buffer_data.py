"""Payloads are opaque bytes; tenant and message ids are data, never key syntax."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.buffer.keys import KeySpace, escape, parse_tenant_tag, tenant_tag

from .layout_helpers import all_keys

AWKWARD_PAYLOADS = [
    b"",
    b"\"quoted\" 'single'",
    b"back\\slash \\\\ \\x00",
    bytes(range(32)) + b"\x7f",
    b"nul\x00in\x00the\x00middle\x00",
    b"\xff\xfe\x80 not utf-8 \xc3\x28",
    "emoji \U0001f600 and U+2028 \u2028 and U+2029 \u2029".encode(),
    b'{"json": "with \\u0000", "n": 1}',
]

AWKWARD_IDS = [
    "a:b",
    "a:b:c",
    "{hash}tag",
    "}{",
    "with space",
    "new\nline",
    "crlf\r\n",
    "per%cent",
    "%3A",
    "*",
    "[x]",
    "",
    "ünïcødé \U0001f600",
    "x" * 5_000,
]


@pytest.mark.parametrize("payload", AWKWARD_PAYLOADS)
def test_awkward_payload_bytes_round_trip_exactly(buffer: MollifierBuffer, payload: bytes) -> None:
    assert buffer.accept("m1", org_id="o", env_id="e", payload=payload)

    stored = buffer.get("m1")
    popped = DrainProtocol(buffer).pop("o", "e")

    assert stored is not None
    assert popped is not None
    assert stored.payload == payload
    assert popped.payload == payload


def test_a_one_mebibyte_payload_round_trips(buffer: MollifierBuffer) -> None:
    payload = bytes(range(256)) * 4096
    assert len(payload) == 1 << 20

    assert buffer.accept("big", org_id="o", env_id="e", payload=payload)
    entries = DrainProtocol(buffer).pop_many("o", "e", 5)

    assert [e.payload == payload for e in entries] == [True]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=4096), message_id=st.text(max_size=40))
def test_any_payload_round_trips_through_accept_and_pop(
    redis_client: redis.Redis, key_prefix: str, payload: bytes, message_id: str
) -> None:
    buffer = MollifierBuffer(redis_client, key_prefix=key_prefix)
    assert buffer.accept(message_id, org_id="o", env_id="e", payload=payload)

    entry = DrainProtocol(buffer).pop("o", "e")

    assert entry is not None
    assert (entry.message_id, entry.payload) == (message_id, payload)
    DrainProtocol(buffer).ack(message_id)
    assert buffer.depth() == 0


def test_the_same_env_name_in_two_orgs_stays_apart(buffer: MollifierBuffer) -> None:
    buffer.accept("a1", org_id="a", env_id="prod", payload=b"a")
    buffer.accept("a2", org_id="a", env_id="prod", payload=b"a")
    buffer.accept("b1", org_id="b", env_id="prod", payload=b"b")

    assert buffer.depth("a", "prod") == 2
    assert buffer.depth("b", "prod") == 1
    popped = DrainProtocol(buffer).pop_many("b", "prod", 10)
    assert [e.message_id for e in popped] == ["b1"]
    assert buffer.orgs() == ["a"]
    assert buffer.envs("a") == ["prod"]
    assert buffer.envs("b") == []


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("a:b", "c"), ("a", "b:c")),
        (("a", "b%3Ac"), ("a", "b:c")),
        (("a%", "b"), ("a", "%b")),
        (("", "a:"), (":", "a")),
        (("{x}", "y"), ("x", "y")),
    ],
)
def test_tenants_that_would_collide_unescaped_stay_apart(
    buffer: MollifierBuffer, first: tuple[str, str], second: tuple[str, str]
) -> None:
    buffer.accept("m1", org_id=first[0], env_id=first[1], payload=b"1")
    buffer.accept("m2", org_id=second[0], env_id=second[1], payload=b"2")

    assert buffer.depth(*first) == 1
    assert buffer.depth(*second) == 1
    one = DrainProtocol(buffer).pop(*first)
    assert one is not None
    assert one.message_id == "m1"
    assert DrainProtocol(buffer).pop(*first) is None
    two = DrainProtocol(buffer).pop(*second)
    assert two is not None
    assert two.message_id == "m2"


@pytest.mark.parametrize("awkward", AWKWARD_IDS, ids=range(len(AWKWARD_IDS)))
def test_awkward_ids_work_and_every_key_stays_under_the_prefix(
    buffer: MollifierBuffer, redis_client: redis.Redis, key_prefix: str, awkward: str
) -> None:
    # Given the awkward string as message id, org id and env id at once
    assert buffer.accept(awkward, org_id=awkward, env_id=awkward, payload=b"p")
    buffer.evaluate_trip(awkward, awkward, window_ms=10_000, threshold=0, hold_ms=10_000)
    assert DrainProtocol(buffer).pop(awkward, awkward) is not None
    assert DrainProtocol(buffer).fail(awkward, code="E", message=awkward)

    # Then it reads back as it went in
    assert buffer.failed(awkward, awkward)[0].message_id == awkward
    assert buffer.tripped() == [(awkward, awkward)]
    assert buffer.retry_failed(awkward)
    assert buffer.orgs() == [awkward]
    assert buffer.envs(awkward) == [awkward]
    assert buffer.depth(awkward, awkward) == 1

    # And every key is under the prefix, with nothing of the id's syntax in it
    keys = [key.decode() if isinstance(key, bytes) else key for key in all_keys(redis_client)]
    assert keys
    for key in keys:
        assert key.startswith(f"{key_prefix}:")
        rest = key[len(key_prefix) + 1 :]
        # Slot groups: the layout's own hash tag ({g<n>.<k>} or {fleet}) comes first, then the ids
        tag = re.match(r"\{(g\d+\.\d+|fleet)\}:", rest)
        if tag and buffer.keys.group_count:
            rest = rest[tag.end() :]
        assert all(c.isalnum() or c in "_.-~%:" for c in rest), key

    DrainProtocol(buffer).ack(awkward)
    assert buffer.depth() == 0


def test_key_names_are_built_from_escaped_ids() -> None:
    keys = KeySpace("p")

    assert keys.entry("a:b") == "p:entry:a%3Ab"
    assert keys.tenant("a:b", "c").queue == "p:queue:a%3Ab:c"
    assert keys.tenant("a", "b:c").queue == "p:queue:a:b%3Ac"
    assert keys.envs("{o}") == "p:envs:%7Bo%7D"


def test_depth_fields_and_registry_members_are_length_prefixed_raw_ids() -> None:
    # Hash fields and sorted-set members, not keys: the scripts build them from the raw ids
    keys = KeySpace("p")

    assert keys.tenant("o", "e").depth_env_field == "env:1:o:e"
    assert keys.depth_org_field("a:b") == "org:a:b"
    assert keys.tenant("a:1", "b").tripped_member == "3:a:1:b"
    assert keys.tenant("a", "1:b").tripped_member == "1:a:1:b"
    assert keys.tenant("\u00e9", "e").tripped_member == "2:\u00e9:e"  # the length counts bytes


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.text(), st.text())
def test_tenant_tags_are_injective_and_read_back(org_a: str, env_a: str, org_b: str, env_b: str) -> None:
    assert parse_tenant_tag(tenant_tag(org_a, env_a).encode()) == (org_a, env_a)
    assert (tenant_tag(org_a, env_a) == tenant_tag(org_b, env_b)) == ((org_a, env_a) == (org_b, env_b))


@pytest.mark.parametrize("garbage", [b"", b"x:a:b", b"5:a:b", b"1:ab", b'["a", "b"]', b"-1:a:b"])
def test_a_malformed_tenant_tag_is_refused(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        parse_tenant_tag(garbage)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_escape_is_injective_and_leaves_no_separator(a: str, b: str) -> None:
    assert ":" not in escape(a)
    assert unquote(escape(a)) == a
    assert (escape(a) == escape(b)) == (a == b)


def test_tenant_key_cache_stays_bounded() -> None:
    keys = KeySpace("p")
    for n in range(10_050):
        keys.tenant("o", str(n))
    assert len(keys._tenants) <= 10_000
    assert keys.tenant("o", "1").queue == "p:queue:o:1"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_entry_keys_escape_exactly_as_escape_does(message_id: str) -> None:
    assert KeySpace("p").entry(message_id) == f"p:entry:{escape(message_id)}"
