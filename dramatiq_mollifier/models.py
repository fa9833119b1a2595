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
    "LOOKUP_STATES",
    "BufferEntry",
    "CapOverflow",
    "EntryStatus",
    "MessageLookup",
    "PausedTenant",
    "TenantCap",
    "TenantPage",
    "TenantRow",
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
    #: The owner token of the pop that leased it (a DRAINING entry this process popped): only
    #: its holder may ack, requeue, fail or release it. None otherwise.
    lease_owner: str | None = None


class CapOverflow(str, enum.Enum):
    """What a send does when its tenant's buffered messages are at their cap."""

    #: The message goes to the broker as if the mollifier were not there (counted).
    PASS_THROUGH = "pass_through"
    #: The send raises :class:`~dramatiq_mollifier.errors.BufferCapExceededError`.
    REJECT = "reject"
    #: The message is stored as a dead letter (error code ``cap_exceeded``), never delivered.
    DEAD_LETTER = "dead_letter"


#: The states :attr:`MessageLookup.state` takes.
LOOKUP_STATES = ("queued", "draining", "dead_lettered", "absent")


@dataclass(frozen=True, slots=True)
class MessageLookup:
    """Where one message id is in the buffer (``TenantControls.lookup``)."""

    message_id: str
    #: ``queued``, ``draining``, ``dead_lettered`` or ``absent`` (not in the buffer).
    state: str
    org_id: str | None = None
    env_id: str | None = None
    #: Earlier failed handler attempts.
    attempts: int | None = None
    #: Time since the entry was accepted, by the Redis server's clock.
    age_ms: int | None = None
    #: 0-based position in its env's queue (0 = next to drain); None unless queued.
    position: int | None = None
    #: ``(code, message)`` of a dead letter's last error.
    error: tuple[str, str] | None = None
    #: The mode that wrote the entry (``divert`` or ``dual_write``).
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class PausedTenant:
    """An org (``env_id`` None: every env of it) or one env, paused by an operator."""

    org_id: str
    env_id: str | None
    #: When it was paused (Redis server time, ms since the epoch).
    paused_at_ms: int


@dataclass(frozen=True, slots=True)
class TenantCap:
    """A runtime cap override: most buffered messages of an org (``env_id`` None) or an env."""

    org_id: str
    env_id: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class TenantRow:
    """One line of the tenant listing: an env with buffered work (or a rule of its own)."""

    org_id: str
    env_id: str
    #: QUEUED + DRAINING entries of the env.
    depth: int
    #: Age of the env's oldest QUEUED entry (ms, Redis clock); None when none is queued.
    oldest_age_ms: int | None
    #: Whether the env's trip marker is live.
    tripped: bool
    #: Whether the env or its org is paused.
    paused: bool
    #: The cap in force for the env (its override, else the settings' per-env cap), or None.
    cap: int | None
    #: The org's drain weight (1 unless overridden).
    weight: int
    #: Whether the org is enrolled (statically or by its runtime flag); None when unknown
    #: (the listing was built without settings).
    enrolled: bool | None
    #: The cap in force for the whole org (its override, else the settings' per-org cap), or None.
    org_cap: int | None = None


@dataclass(frozen=True, slots=True)
class TenantPage:
    """One page of :meth:`TenantControls.tenants`."""

    rows: list[TenantRow]
    #: Tenants matching the filter, on every page.
    total: int
    offset: int
    limit: int
