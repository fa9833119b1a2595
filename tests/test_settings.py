"""MollifierSettings: defaults, environment parsing, loud validation naming the setting, immutability."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dramatiq_mollifier import Mollifier, MollifierConfigurationError, MollifierMode, MollifierSettings


def test_defaults_match_the_documented_ones() -> None:
    settings = MollifierSettings()

    assert settings.enabled is False
    assert settings.shadow_mode is False
    assert settings.mode is MollifierMode.DIVERT
    assert settings.enabled_orgs == frozenset()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.key_prefix == "mollifier"
    assert (settings.trip_window_ms, settings.trip_threshold, settings.trip_hold_ms) == (200, 100, 500)
    assert settings.entry_ttl_s is None
    assert settings.effective_entry_ttl_s is None
    assert settings.run_drainer is False
    assert settings.drain_concurrency == 16
    assert settings.drain_max_attempts == 3
    assert settings.drain_max_orgs_per_tick == 500
    assert settings.drain_poll_interval_ms == 100
    assert settings.drain_lease_ms == 60_000
    assert settings.drain_shutdown_timeout_ms == 30_000
    assert settings.graceful_shutdown_timeout_ms == 600_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enabled", "maybe"),
        ("shadow_mode", "sometimes"),
        ("mode", "bogus"),
        ("mode", "DIVERT"),
        ("enabled_orgs", [1, 2]),
        ("enabled_orgs", 42),
        ("redis_url", "http://localhost:6379"),
        ("redis_url", "localhost:6379"),
        ("key_prefix", ""),
        ("key_prefix", "has space"),
        ("trip_window_ms", 0),
        ("trip_window_ms", -1),
        ("trip_window_ms", "abc"),
        ("trip_threshold", -1),
        ("trip_hold_ms", -1),
        ("entry_ttl_s", 0),
        ("entry_ttl_s", -600),
        ("drainer_enabled", "perhaps"),
        ("drain_concurrency", 0),
        ("drain_batch_size", 0),
        ("drain_max_attempts", 0),
        ("drain_max_orgs_per_tick", -5),
        ("drain_poll_interval_ms", 0),
        ("drain_lease_ms", 0),
        ("drain_shutdown_timeout_ms", 0),
        ("graceful_shutdown_timeout_ms", -1),
    ],
)
def test_a_bad_value_is_rejected_with_a_message_naming_the_setting(field: str, value: Any) -> None:
    with pytest.raises(MollifierConfigurationError) as caught:
        MollifierSettings(**{field: value})

    assert field in str(caught.value)
    assert f"MOLLIFIER_{field.upper()}" in str(caught.value)


def test_an_unknown_setting_is_rejected() -> None:
    with pytest.raises(MollifierConfigurationError, match="trip_treshold"):
        MollifierSettings(trip_treshold=5)


def test_a_bad_environment_value_is_rejected_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLLIFIER_TRIP_HOLD_MS", "-3")

    with pytest.raises(MollifierConfigurationError, match="MOLLIFIER_TRIP_HOLD_MS"):
        MollifierSettings()


def test_the_drain_shutdown_must_end_a_second_before_dramatiqs() -> None:
    MollifierSettings(drain_shutdown_timeout_ms=29_000, graceful_shutdown_timeout_ms=30_000)

    with pytest.raises(MollifierConfigurationError) as caught:
        MollifierSettings(drain_shutdown_timeout_ms=29_001, graceful_shutdown_timeout_ms=30_000)

    assert "drain_shutdown_timeout_ms" in str(caught.value)
    assert "graceful_shutdown_timeout_ms" in str(caught.value)


def test_the_shutdown_relation_is_checked_against_the_default_graceful_timeout() -> None:
    with pytest.raises(MollifierConfigurationError, match="drain_shutdown_timeout_ms"):
        MollifierSettings(drain_shutdown_timeout_ms=600_000)


@pytest.mark.parametrize(
    ("raw", "orgs"),
    [
        ("acme", {"acme"}),
        ("acme,globex", {"acme", "globex"}),
        (" acme , globex ,, ", {"acme", "globex"}),
        ("*", {"*"}),
        ("", set()),
    ],
)
def test_enabled_orgs_from_the_environment_is_comma_separated(
    raw: str, orgs: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOLLIFIER_ENABLED_ORGS", raw)

    settings = MollifierSettings()

    assert settings.enabled_orgs == frozenset(orgs)
    assert isinstance(settings.enabled_orgs, frozenset)


def test_star_enrols_every_org_and_a_list_enrols_its_members(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLLIFIER_ENABLED_ORGS", "*")
    assert MollifierSettings().org_enrolled_statically("anyone")

    listed = MollifierSettings(enabled_orgs={"acme"})
    assert listed.org_enrolled_statically("acme")
    assert not listed.org_enrolled_statically("globex")
    assert not listed.org_enrolled_statically("*acme")


def test_the_environment_fills_every_setting_and_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLLIFIER_ENABLED", "true")
    monkeypatch.setenv("MOLLIFIER_SHADOW_MODE", "1")
    monkeypatch.setenv("MOLLIFIER_MODE", "dual_write")
    monkeypatch.setenv("MOLLIFIER_TRIP_THRESHOLD", "5")
    monkeypatch.setenv("MOLLIFIER_KEY_PREFIX", "from-env")

    settings = MollifierSettings(key_prefix="from-argument")

    assert settings.enabled and settings.shadow_mode
    assert settings.mode is MollifierMode.DUAL_WRITE
    assert settings.trip_threshold == 5
    assert settings.key_prefix == "from-argument"
    assert settings.effective_entry_ttl_s == 600


def test_the_string_false_is_false_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLLIFIER_ENABLED", "false")
    assert MollifierSettings().enabled is False


def test_settings_are_immutable() -> None:
    settings = MollifierSettings(enabled_orgs={"acme"})

    with pytest.raises(ValidationError):
        settings.enabled = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        settings.enabled_orgs.add("globex")  # type: ignore[attr-defined]


def test_drainer_enabled_defaults_to_enabled_and_may_differ() -> None:
    assert MollifierSettings(enabled=True).run_drainer is True
    assert MollifierSettings(enabled=True, drainer_enabled=False).run_drainer is False
    assert MollifierSettings(enabled=False, drainer_enabled=True).run_drainer is True


def test_an_explicit_entry_ttl_wins_in_either_mode() -> None:
    assert MollifierSettings(entry_ttl_s=30).effective_entry_ttl_s == 30
    assert MollifierSettings(mode="dual_write", entry_ttl_s=30).effective_entry_ttl_s == 30


def test_mollifier_without_arguments_reads_the_environment_and_does_no_io(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Port 1: nothing listens, so any I/O at construction would fail.
    monkeypatch.setenv("MOLLIFIER_ENABLED", "true")
    monkeypatch.setenv("MOLLIFIER_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("MOLLIFIER_ENABLED_ORGS", "acme")

    mollifier = Mollifier()

    assert mollifier.settings.enabled
    assert mollifier.settings.enabled_orgs == {"acme"}
    assert mollifier.drainer is None
    assert mollifier.buffer.key_prefix == "mollifier"
