"""A pytest plugin of the suite (``tests/conftest.py`` loads it): failures pytest cannot format
are still reported."""

from __future__ import annotations

import traceback
from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Report a failure pytest cannot format, instead of losing it to an INTERNALERROR.

    CPython 3.11 can leave a traceback entry without a line number (``tb_lineno`` None), and
    pytest's formatter then raises TypeError: a CI run once stopped with INTERNALERROR and never
    said what failed. The failure is reported with Python's own formatting instead.
    """
    try:
        return (yield)
    except Exception:  # the TypeError, or the plugin warning it becomes under filterwarnings=error
        if call.excinfo is None:
            raise
        return pytest.TestReport(
            item.nodeid,
            item.location,
            dict.fromkeys(item.keywords, 1),
            "failed",
            "".join(traceback.format_exception(call.excinfo.value)),
            call.when,
            duration=call.duration,
            start=call.start,
            stop=call.stop,
        )
