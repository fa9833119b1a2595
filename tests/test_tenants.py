"""The default tenant resolver on every send's path: options -> Tenant, built once per pair."""

from __future__ import annotations

import pytest

from dramatiq_mollifier import Tenant
from dramatiq_mollifier.gate import tenants
from dramatiq_mollifier.gate.tenants import INVALID, OptionTenants, checked


def test_options_name_the_tenant() -> None:
    of = OptionTenants().of

    assert of({"org_id": "acme", "env_id": "prod"}) == Tenant("acme", "prod")
    assert of({"org_id": "acme"}) == Tenant("acme", "default")
    assert of({"org_id": "acme", "env_id": ""}) == Tenant("acme", "default")
    assert of({"org_id": 42, "env_id": 7}) == Tenant("42", "7")
    assert of({"org_id": "acme", "env_id": 7}) == Tenant("acme", "7")
    assert of({}) is None
    assert of({"org_id": ""}) is None
    assert of({"org_id": ["acme"]}) is INVALID
    assert of({"org_id": True}) is INVALID  # a bool is not an id, though it hashes like 1
    assert of({"org_id": "acme", "env_id": 1.5}) is INVALID


def test_a_pair_is_built_once_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tenants, "MAX_CACHED", 3)
    resolver = OptionTenants()

    first = resolver.of({"org_id": "acme", "env_id": "prod"})
    assert resolver.of({"org_id": "acme", "env_id": "prod"}) is first
    for n in range(10):
        assert resolver.of({"org_id": f"org-{n}"}) == Tenant(f"org-{n}", "default")
        assert len(resolver._cache) <= 3


def test_a_custom_resolvers_tenant_is_read_as_the_options_are() -> None:
    # Tenant(42, "prod") from a resolver was refused on every send, though org_id=42 is accepted.
    assert checked(Tenant(42, "prod")) == Tenant("42", "prod")  # type: ignore[arg-type]
    assert checked(Tenant("acme", 7)) == Tenant("acme", "7")  # type: ignore[arg-type]
    assert checked(Tenant("acme", None)) == Tenant("acme", "default")  # type: ignore[arg-type]
    same = Tenant("acme", "prod")
    assert checked(same) is same
    for unusable in (Tenant("", "prod"), Tenant(True, "prod"), Tenant("acme", 1.5), ("acme", "prod")):
        assert checked(unusable) is None
