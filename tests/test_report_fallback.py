"""The suite's report fallback (``tests/report_fallback.py``): a failure pytest cannot format is
reported, not lost to an INTERNALERROR (as once in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# A test that fails through a frame with no line numbers: CPython 3.11 leaves tb_lineno None for
# such an entry, as it did at some instructions in the CI run that lost its failure.
FAILING_WITHOUT_LINE_NUMBERS = """
def boom():
    raise RuntimeError("the real failure")


def without_locations(code):
    units = len(code.co_code) // 2
    table = bytearray()
    while units:
        table.append(0xF8 | (min(units, 8) - 1))  # a "no location" entry for up to 8 code units
        units -= min(units, 8)
    return code.replace(co_linetable=bytes(table))


def test_inner():
    exec(without_locations(compile("boom()", "<nolines>", "exec")), {"boom": boom})
"""


def test_a_failure_pytest_cannot_format_is_reported_with_its_cause(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_inner=FAILING_WITHOUT_LINE_NUMBERS)
    pytester.makeini("[pytest]\nfilterwarnings =\n    error\n")
    monkeypatch.setenv("PYTHONPATH", str(REPO))

    result = pytester.runpytest_subprocess("-p", "tests.report_fallback", "-p", "no:cacheprovider")

    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*RuntimeError: the real failure*", "*1 failed*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
