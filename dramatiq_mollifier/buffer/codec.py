"""Decoding the buffer's replies, and the boundary that turns Redis errors into ours.

Every module of the buffer goes through :func:`boundary`, so a caller sees one error type,
:class:`BufferUnavailableError`, whatever Redis or a garbled reply raised.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import redis

from ..errors import BufferUnavailableError
from ..models import BufferEntry, EntryStatus

__all__ = [
    "FAILURES",
    "boundary",
    "check_scope",
    "entry_from_hash",
    "text",
    "texts",
    "to_datetime",
    "unpack_ids",
    "unpack_popped",
    "wrap",
]

# The header of each entry in a pop reply's frames (see lua/pop.lua).
POP_HEADER = struct.Struct(">iiiiiiq")
# The header of each id in a peek reply (see lua/peek.lua).
ID_HEADER = struct.Struct(">i")
# What a buffer call can raise: Redis errors, and replies that are not what the scripts promise
# (they surface as these while being decoded).
FAILURES = (
    redis.RedisError,
    # redis-py's cluster client raises this for what it refuses itself (keys of several slots).
    redis.exceptions.RedisClusterException,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)


def text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8")


def texts(values: Iterable[Any]) -> list[str]:
    return [text(value) for value in values]


def to_datetime(ms: bytes | int) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)


def last_error(code: bytes | None, message: bytes | None) -> tuple[str, str] | None:
    if code is None:
        return None
    return text(code), text(message or b"")


def unpack_ids(frames: bytes) -> list[str]:
    """The ids of a peek reply (``lua/peek.lua``): each a 4-byte length, then the id."""
    ids = []
    at = 0
    while at < len(frames):
        (size,) = ID_HEADER.unpack_from(frames, at)
        at += ID_HEADER.size
        ids.append(frames[at : (at := at + size)].decode("utf-8"))
    return ids


def unpack_popped(frames: bytes, org_id: str, env_id: str, owner: str | None = None) -> Iterator[BufferEntry]:
    """The entries of a pop reply: one length-prefixed frame each (see ``lua/pop.lua``), leased
    to ``owner`` (the pop's owner token).
    """
    header = POP_HEADER
    at = 0
    while at < len(frames):
        id_len, payload_len, code_len, message_len, mode_len, attempts, created_at_ms = header.unpack_from(
            frames, at
        )
        at += header.size
        message_id = frames[at : (at := at + id_len)].decode("utf-8")
        payload = frames[at : (at := at + payload_len)]
        error = None
        if code_len >= 0:
            code = frames[at : (at := at + code_len)].decode("utf-8")
            error = (code, frames[at : (at := at + message_len)].decode("utf-8"))
        else:
            at += message_len
        mode = frames[at : (at := at + mode_len)].decode("utf-8") if mode_len >= 0 else None
        yield BufferEntry(
            message_id=message_id,
            org_id=org_id,
            env_id=env_id,
            payload=payload,
            status=EntryStatus.DRAINING,
            attempts=attempts,
            created_at=to_datetime(created_at_ms),
            last_error=error,
            mode=mode,
            lease_owner=owner,
        )


def entry_from_hash(message_id: str, fields: dict[Any, Any]) -> BufferEntry:
    """The entry stored in an entry hash (``HGETALL``)."""
    return BufferEntry(
        message_id=message_id,
        org_id=text(fields[b"org"]),
        env_id=text(fields[b"env"]),
        payload=fields[b"payload"],
        status=EntryStatus(text(fields[b"status"])),
        attempts=int(fields[b"attempts"]),
        created_at=to_datetime(fields[b"created_at_ms"]),
        last_error=last_error(fields.get(b"error_code"), fields.get(b"error_message")),
        mode=text(fields[b"mode"]) if b"mode" in fields else None,
    )


def wrap(operation: str, exc: Exception) -> BufferUnavailableError:
    if isinstance(exc, redis.RedisError):
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = f"unexpected reply ({type(exc).__name__}: {exc})"
    return BufferUnavailableError(f"mollifier buffer: Redis {operation} failed: {reason}")


def check_scope(org_id: str | None, env_id: str | None) -> None:
    if org_id is None and env_id is not None:
        raise ValueError(f"env_id={env_id!r} needs org_id too: env ids are scoped by their org")


@contextmanager
def boundary(operation: str) -> Iterator[None]:
    """Turn Redis errors, and replies that cannot be decoded, into BufferUnavailableError."""
    try:
        yield
    except FAILURES as exc:
        raise wrap(operation, exc) from exc
