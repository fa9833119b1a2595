"""Small value types shared by the buffer, the gate and the drainer."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_ENV_ID",
    "STATE_ADMITTED",
    "STATE_DRAINED",
    "STATE_FOR_OPTION",
    "STATE_OPTION",
    "BufferEntry",
    "EntryStatus",
    "Tenant",
    "TripDecision",
    "TripWindow",
    "marker",
    "marker_of",
]

#: The env of a message that names an org but no env.
DEFAULT_ENV_ID = "default"

#: The message option in which the mollifier marks an enqueue it must not gate again.
STATE_OPTION = "mollifier_state"
#: The message id the marker was set for: a copy under another id is gated like any message.
STATE_FOR_OPTION = "mollifier_for"
#: The gate let a delayed send through: its promotion from the delay queue bypasses the gate.
STATE_ADMITTED = "admitted"
#: A drainer re-enqueued the message from the buffer.
STATE_DRAINED = "drained"


def marker(state: str, message_id: str) -> dict[str, str]:
    """The options that mark message ``message_id`` with ``state`` (bound to that id)."""
    return {STATE_OPTION: state, STATE_FOR_OPTION: message_id}


def marker_of(options: Mapping[str, Any], message_id: str) -> str | None:
    """The marker state set for ``message_id`` in ``options``; None if none, or if it was set
    for another message id (the options were copied from another message)."""
    state = options.get(STATE_OPTION)
    if state is None or options.get(STATE_FOR_OPTION) != message_id:
        return None
    return str(state)


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
class TripWindow:
    """What a trip window holds after a fold of locally counted enqueues (``trip_evaluator=local``)."""

    #: The window's count, the fold included.
    count: int
    #: Milliseconds until the window ends; <= 0 when there is none.
    window_ttl_ms: int
    #: Milliseconds until the hold marker expires; <= 0 when the env (or fleet) is not held.
    hold_ttl_ms: int
    #: Entries the env has in the buffer (0 for the fleet-wide window).
    backlog: int = 0


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
