"""The public home of :class:`CrashRetries`; the parts live in :mod:`dramatiq_mollifier.crash`."""

from __future__ import annotations

from .crash import CrashCause, CrashNotRetried, CrashRetries, WorkerCrashed

__all__ = ["CrashCause", "CrashNotRetried", "CrashRetries", "WorkerCrashed"]
