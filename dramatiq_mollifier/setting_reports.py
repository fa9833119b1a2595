"""How problems with the settings are told: one line per bad setting naming its variable, and a
warning for a ``MOLLIFIER_*`` variable that is no setting but close to one."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable

from pydantic import ValidationError

__all__ = ["describe", "warn_about_misspelled_variables"]

logger = logging.getLogger(__name__)

_warned: set[str] = set()


def describe(exc: ValidationError) -> str:
    """One line per bad setting, naming the field and its environment variable."""
    lines = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        reason = str(error["msg"]).removeprefix("Value error, ")
        if field:
            variable = f"MOLLIFIER_{field.upper()}"
            # A URL may hold a password: never echo it.
            got = "" if field == "redis_url" else f" (got {error['input']!r})"
            lines.append(f"{field} ({variable}): {reason}{got}")
        else:
            lines.append(reason)
    return "invalid mollifier settings: " + "; ".join(lines)


def warn_about_misspelled_variables(known: Iterable[str]) -> None:
    """Warn (once per process and name) about a ``MOLLIFIER_*`` variable that is none of the
    ``known`` ones but close to one: pydantic-settings ignores it, so ``MOLLIFIER_TRIP_TRESHOLD=5``
    would leave the default threshold in force without a word. Other names are left alone."""
    names = list(known)
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith("MOLLIFIER_") or upper in names or name in _warned:
            continue
        close = difflib.get_close_matches(upper, names, n=1, cutoff=0.85)
        if close:
            _warned.add(name)
            logger.warning("%s is not a mollifier setting and is ignored: did you mean %s?", name, close[0])
