"""Small value types shared by the buffer, the gate and the drainer."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

__all__ = [
    "DEFAULT_ENV_ID",
    "STATE_ADMITTED",
    "STATE_DRAINED",
    "STATE_OPTION",
    "BufferEntry",
    "EntryStatus",
    "Tenant",
    "TripDecision",
]

#: The env of a message that names an org but no env.
DEFAULT_ENV_ID = "default"

#: The message option in which the mollifier marks messages it must never gate again.
STATE_OPTION = "mollifier_state"
#: The gate let the message through once: its retries and delay-queue promotions bypass the gate.
STATE_ADMITTED = "admitted"
#: A drainer re-enqueued the message from the buffer.
STATE_DRAINED = "drained"


class EntryStatus(str, enum.Enum):
    """Where a buffered entry is in its life."""

    QUEUED = "QUEUED"
    DRAINING = "DRAINING"
    FAILED = "FAILED"


class Tenant(NamedTuple):
    """The org and env a message is enqueued on behalf of."""

    org_id: str
    env_id: str = DEFAULT_ENV_ID


@dataclass(frozen=True, slots=True)
class TripDecision:
    """The result of one trip evaluation: whether the env is tripped, and its window count."""

    tripped: bool
    count: int


@dataclass(frozen=True, slots=True)
class BufferEntry:
    """One buffered message, as stored in Redis."""

    message_id: str
    org_id: str
    env_id: str
    #: The encoded Dramatiq message; opaque to the buffer.
    payload: bytes
    status: EntryStatus
    #: Earlier failed handler attempts (a pop does not count as one).
    attempts: int
    #: When the entry was accepted (timezone-aware, UTC).
    created_at: datetime
    #: ``(code, message)`` of the last terminal failure, or None.
    last_error: tuple[str, str] | None = None
    #: The mode of the gate that wrote it (``divert`` or ``dual_write``): a drainer handles the
    #: entry by this mode, whatever its own. None for an entry written before entries said.
    mode: str | None = None
