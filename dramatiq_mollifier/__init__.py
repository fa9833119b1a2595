"""Smooth per-tenant enqueue bursts in Dramatiq through a fair Redis buffer."""

from __future__ import annotations

from ._version import __version__
from .buffer import MollifierBuffer
from .buffer.controls import TenantControls
from .crash import CrashRetries
from .drain.drainer import DrainResult, MollifierDrainer
from .errors import (
    BufferCapExceededError,
    BufferUnavailableError,
    CrashNotRetried,
    DuplicateMollifierError,
    InvalidArgumentError,
    MiddlewareConfigurationError,
    MollifierConfigurationError,
    MollifierError,
    UndeliverableEntryError,
    WorkerCrashed,
)
from .middleware import Mollifier
from .models import (
    BufferEntry,
    CapOverflow,
    EntryStatus,
    MessageLookup,
    PausedTenant,
    Tenant,
    TenantCap,
    TenantPage,
    TenantRow,
    TripDecision,
)
from .settings import MollifierMode, MollifierSettings, TripEvaluator

__all__ = [
    # Middleware
    "Mollifier",
    "MollifierMode",
    "MollifierSettings",
    "TripEvaluator",
    # Buffer
    "BufferEntry",
    "EntryStatus",
    "MollifierBuffer",
    "Tenant",
    "TripDecision",
    # Operator controls
    "CapOverflow",
    "MessageLookup",
    "PausedTenant",
    "TenantCap",
    "TenantControls",
    "TenantPage",
    "TenantRow",
    # Drainer
    "DrainResult",
    "MollifierDrainer",
    # Crash retries
    "CrashRetries",
    # Errors
    "BufferCapExceededError",
    "BufferUnavailableError",
    "CrashNotRetried",
    "DuplicateMollifierError",
    "InvalidArgumentError",
    "MiddlewareConfigurationError",
    "MollifierConfigurationError",
    "MollifierError",
    "UndeliverableEntryError",
    "WorkerCrashed",
    # Meta
    "__version__",
]
