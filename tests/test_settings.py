"""MollifierSettings: defaults, environment parsing, loud validation naming the setting, immutability."""

from __future__ import annotations

import enum
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from pydantic import ValidationError

from dramatiq_mollifier import Mollifier, MollifierConfigurationError, MollifierMode, MollifierSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def documented_settings() -> dict[str, tuple[str, str]]:
    """setting -> (environment variable, default cell) of each row of the README's table."""
    section = README.read_text(encoding="utf-8").split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| ([^|]+) \|", section, re.MULTILINE)
    return {name: (variable, default.strip()) for name, variable, default in rows}


def shown(value: object) -> str:
    """A default as the README writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def test_no_developer_setting_reaches_a_test(tmp_path: Path) -> None:
    # Given a developer's MOLLIFIER_MODE, and a test that reports the settings it sees
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import os\n\n"
        "def test_probe():\n"
        "    seen = [n for n in os.environ if n.startswith('MOLLIFIER_')]\n"
        "    assert [n for n in seen if not n.startswith('MOLLIFIER_TEST_')] == []\n"
    )
    env = {**os.environ, "MOLLIFIER_MODE": "bogus"}
    root = Path(__file__).resolve().parent.parent

    def run(*plugins: str) -> int:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, str(probe)]
        return subprocess.run(command, cwd=root, env=env, capture_output=True, check=False).returncode

    # Then the probe sees it without tests/conftest.py, and does not with it (which clears
    # MOLLIFIER_*, except the harness's MOLLIFIER_TEST_*, for every test)
    assert run() == 1
    assert run("-p", "tests.conftest") == 0


def test_the_readme_documents_every_setting_its_variable_and_its_default() -> None:
    documented = documented_settings()
    defaults = MollifierSettings()

    assert sorted(documented) == sorted(MollifierSettings.model_fields)
    for name, (variable, default) in documented.items():
        assert variable == f"MOLLIFIER_{name.upper()}"
        value = getattr(defaults, name)
        # A literal default is written `value`, maybe with a gloss: "`0` (none)".
        literal = re.fullmatch(r"`([^`]+)`( \(.*\))?", default)
        if literal:
            assert literal.group(1) == shown(value), name
        else:
            # "empty", "unset: ...", "same as `enabled`": nothing set
            assert value in (None, frozenset()), name


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
        ("redis_url", "redis://localhost:abc/0"),
        ("redis_url", "redis://localhost:99999/0"),
        ("redis_url", "redis://localhost:6379/abc"),
        ("redis_url", "redis:///0"),
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
        ("supervisor_grace_period_ms", 0),
        ("breaker_failure_threshold", 0),
        ("breaker_cooldown_ms", 0),
        # Upper bounds: past them a value would fail later and quietly.
        ("trip_window_ms", 86_400_001),
        ("trip_threshold", 10**12),
        ("trip_hold_ms", 10**18),
        ("entry_ttl_s", 10**16),
        ("drain_concurrency", 1_001),
        ("drain_batch_size", 10**9),
        ("drain_max_attempts", 10**9),
        ("drain_max_orgs_per_tick", 10**9),
        ("drain_poll_interval_ms", 10**13),
        ("drain_lease_ms", 10**13),
        ("drain_shutdown_timeout_ms", 10**13),
        ("graceful_shutdown_timeout_ms", 10**13),
        ("supervisor_grace_period_ms", 10**13),
        ("breaker_failure_threshold", 1_001),
        ("breaker_cooldown_ms", 3_600_001),
    ],
)
def test_a_bad_value_is_rejected_with_a_message_naming_the_setting(field: str, value: Any) -> None:
    with pytest.raises(MollifierConfigurationError) as caught:
        MollifierSettings(**{field: value})

    assert field in str(caught.value)
    assert f"MOLLIFIER_{field.upper()}" in str(caught.value)


def test_every_numeric_setting_has_an_upper_bound() -> None:
    # A setting added without one fails here, not in production with a huge value.
    unbounded = [
        name
        for name, field in MollifierSettings.model_fields.items()
        if field.annotation in (int, int | None)
        and not any(isinstance(rule, (annotated_types.Le, annotated_types.Lt)) for rule in field.metadata)
    ]
    assert unbounded == []


def test_the_breaker_bounds_themselves_are_accepted() -> None:
    settings = MollifierSettings(breaker_failure_threshold=1_000, breaker_cooldown_ms=3_600_000)
    assert (settings.breaker_failure_threshold, settings.breaker_cooldown_ms) == (1_000, 3_600_000)


def test_an_unknown_setting_is_rejected() -> None:
    with pytest.raises(MollifierConfigurationError, match="trip_treshold"):
        MollifierSettings(trip_treshold=5)


def test_a_misspelled_variable_is_named_with_the_setting_it_resembles(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # pydantic-settings ignores a variable that is no setting: the default stays in force
    monkeypatch.setenv("MOLLIFIER_TRIP_TRESHOLD", "5")
    monkeypatch.setenv("MOLLIFIER_UNRELATED_TO_ANY_SETTING", "1")  # left alone

    with caplog.at_level("WARNING", logger="dramatiq_mollifier"):
        assert MollifierSettings().trip_threshold == 100
        MollifierSettings()

    warned = [record.getMessage() for record in caplog.records]
    assert warned == [
        "MOLLIFIER_TRIP_TRESHOLD is not a mollifier setting and is ignored: did you mean "
        "MOLLIFIER_TRIP_THRESHOLD?"
    ]


def test_a_bad_environment_value_is_rejected_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLLIFIER_TRIP_HOLD_MS", "-3")

    with pytest.raises(MollifierConfigurationError, match="MOLLIFIER_TRIP_HOLD_MS"):
        MollifierSettings()


def test_a_drain_rate_limit_without_a_pace_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # With drain_max_outstanding=0 (the README's migration steps) the rate cap was dropped
    # silently: 200 actor runs in 5 s at a cap of 20/s
    monkeypatch.setenv("MOLLIFIER_DRAIN_RATE_LIMIT_PER_S", "20")
    monkeypatch.setenv("MOLLIFIER_DRAIN_MAX_OUTSTANDING", "0")
    with pytest.raises(MollifierConfigurationError, match="MOLLIFIER_DRAIN_MAX_OUTSTANDING"):
        MollifierSettings()
    assert MollifierSettings(drain_max_outstanding=100).drain_rate_limit_per_s == 20


def test_in_flight_entries_set_below_the_handlers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # It was raised to drain_concurrency silently: a user limiting a refill to 4 entries got 16.
    refused = r"drain_max_in_flight .*at least drain_concurrency \(16\)"
    with pytest.raises(MollifierConfigurationError, match=refused):
        MollifierSettings(drain_max_in_flight=4)
    monkeypatch.setenv("MOLLIFIER_DRAIN_MAX_IN_FLIGHT", "8")
    with pytest.raises(MollifierConfigurationError, match="MOLLIFIER_DRAIN_MAX_IN_FLIGHT"):
        MollifierSettings(drain_concurrency=10)
    assert MollifierSettings(drain_concurrency=8).drain_max_in_flight == 8
    # Left at its default, it is not refused: the drainer takes the larger of the two.
    monkeypatch.delenv("MOLLIFIER_DRAIN_MAX_IN_FLIGHT")
    assert MollifierSettings(drain_concurrency=100).drain_max_in_flight == 64


def test_the_drain_shutdown_must_end_a_second_before_the_supervisors_grace_period() -> None:
    MollifierSettings(drain_shutdown_timeout_ms=29_000)

    with pytest.raises(MollifierConfigurationError) as caught:
        MollifierSettings(drain_shutdown_timeout_ms=29_001)

    assert "drain_shutdown_timeout_ms" in str(caught.value)
    assert "supervisor_grace_period_ms (30000)" in str(caught.value)
    MollifierSettings(drain_shutdown_timeout_ms=89_000, supervisor_grace_period_ms=90_000)


def test_the_drain_shutdown_and_dramatiqs_add_up_against_the_grace_period() -> None:
    # Dramatiq starts its own shutdown timeout after before_worker_shutdown (the drainer's
    # stop) returns: 10 s + 20 s leave no margin in 30 s, though each alone fits.
    with pytest.raises(MollifierConfigurationError) as caught:
        MollifierSettings(drain_shutdown_timeout_ms=10_000, graceful_shutdown_timeout_ms=20_000)

    assert "graceful_shutdown_timeout_ms (20000)" in str(caught.value)
    MollifierSettings(drain_shutdown_timeout_ms=10_000, graceful_shutdown_timeout_ms=19_000)


def test_a_bad_redis_url_names_the_setting_and_what_is_wrong() -> None:
    with pytest.raises(MollifierConfigurationError, match=r"MOLLIFIER_REDIS_URL.*is not a number"):
        MollifierSettings(redis_url="redis://localhost:6379/abc")
    with pytest.raises(MollifierConfigurationError, match=r"MOLLIFIER_REDIS_URL.*port"):
        MollifierSettings(redis_url="redis://localhost:port/0")
    MollifierSettings(redis_url="rediss://user:pw@example.com:6380/15")
    MollifierSettings(redis_url="unix:///run/redis.sock?db=2")


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


def test_enabled_orgs_from_the_environment_may_be_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLLIFIER_ENABLED_ORGS", '["acme", "globex"]')
    assert MollifierSettings().enabled_orgs == {"acme", "globex"}


@pytest.mark.parametrize("raw", ['"acme,globex"', "acme globex", "acme;globex", "[acme", "['acme']"])
def test_enabled_orgs_in_another_list_form_is_refused_naming_the_variable(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each enrolled an org nobody has (quotes from an env file, brackets, a space or ';' as the
    # separator), and so enrolled nobody, without a word
    monkeypatch.setenv("MOLLIFIER_ENABLED_ORGS", raw)
    with pytest.raises(MollifierConfigurationError, match="MOLLIFIER_ENABLED_ORGS"):
        MollifierSettings()


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


def test_an_explicit_entry_ttl_wins_in_dual_write_mode() -> None:
    assert MollifierSettings(mode="dual_write", entry_ttl_s=30).effective_entry_ttl_s == 30


def test_an_entry_ttl_in_divert_mode_is_refused_since_it_would_expire_the_only_copy() -> None:
    with pytest.raises(
        MollifierConfigurationError, match=r"entry_ttl_s \(MOLLIFIER_ENTRY_TTL_S\) cannot be set in divert"
    ):
        MollifierSettings(entry_ttl_s=30)
    with pytest.raises(MollifierConfigurationError, match="divert mode"):
        MollifierSettings(mode="divert", entry_ttl_s=600)


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
