"""Crash retries: a message whose worker process died is retried under its actor's policy.

See :class:`CrashRetries` and the README's "Crash retries" section.
"""

from __future__ import annotations

from ..errors import CrashNotRetried, WorkerCrashed
from .classify import SIGNALS, CrashCause, CrashVerdict, classify
from .middleware import CrashRetries

__all__ = [
    "SIGNALS",
    "CrashCause",
    "CrashNotRetried",
    "CrashRetries",
    "CrashVerdict",
    "WorkerCrashed",
    "classify",
]
