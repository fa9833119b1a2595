"""The Redis side of crash detection: per-delivery in-flight records and per-process heartbeats.

Keys, all under ``key_prefix``:

* ``<prefix>:crash:msg:<message id, percent-encoded>``: the record of the delivery in flight, as
  ``"<token> <json>"``. Written by ``lua/enter.lua`` on the way in (one call: write ours, read the
  earlier one and how much of its time to live is gone), its time to live reset by
  ``lua/refresh.lua`` on every heartbeat of the process running it, deleted by
  ``lua/release.lua`` on the way out only while it still holds our token.
* ``<prefix>:crash:proc:<proc id>``: a worker process's heartbeat and, once it is known to be dead,
  the evidence of how it died, for workers on other hosts to judge its records by.
* ``{<prefix>:crash:msg:<message id>}:done`` (in the record's slot): the message's attempts that
  are over (``lua/conclude.lua``), so a redelivery of one whose ack or nack died with its worker
  process is not run again (``lua/enter.lua`` refuses it).

Methods raise ``redis.RedisError``; the middleware, which fails open, is the boundary that
catches it. Every call goes through a circuit breaker: while Redis is unreachable or stalled,
calls raise :class:`~dramatiq_mollifier.breaker.CircuitOpenError` at once instead of waiting.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal, TypeVar

import redis
from redis.exceptions import RedisClusterException

from ..breaker import CircuitBreaker
from ..buffer.clients import client_from_url, is_cluster
from ..buffer.keys import escape
from ..buffer.store import connection_retry
from .evidence import Evidence

_T = TypeVar("_T")

__all__ = [
    "DEFAULT_SOCKET_TIMEOUT_MS",
    "CrashStore",
    "DeliveryRecord",
    "Entered",
    "Previous",
    "ProcState",
    "ProcStatus",
    "client_for",
]

#: ``client_for``: how long one command and one connection attempt may wait. 1 second.
DEFAULT_SOCKET_TIMEOUT_MS = 1_000


def client_for(url: str) -> redis.Redis:
    """A client for ``url`` with bounded timeouts and one quick retry after a connection error only."""
    timeout_s = DEFAULT_SOCKET_TIMEOUT_MS / 1000
    client: redis.Redis = client_from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=connection_retry()
    )
    return client


ProcStatus = Literal["running", "stopping", "dead"]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DeliveryRecord:
    """One delivery of a message, in flight in one worker process."""

    #: Random per delivery: only this delivery may clear the record.
    token: str
    host: str
    hostname: str
    pid: int
    start_ticks: int
    proc_id: str
    #: When processing began, epoch milliseconds.
    started_ms: int
    #: The time to live its writer gives it on every refresh; 0 when an older version wrote it.
    ttl_ms: int = 0

    def encode(self) -> str:
        return f"{self.token} {json.dumps(asdict(self), separators=(',', ':'))}"

    @classmethod
    def decode(cls, value: bytes | str) -> DeliveryRecord:
        """Raises ValueError (or a subclass) when ``value`` is not a record."""
        _token, _, body = _text(value).partition(" ")
        fields = json.loads(body)
        return cls(
            token=str(fields["token"]),
            host=str(fields["host"]),
            hostname=str(fields["hostname"]),
            pid=int(fields["pid"]),
            start_ticks=int(fields["start_ticks"]),
            proc_id=str(fields["proc_id"]),
            started_ms=int(fields["started_ms"]),
            ttl_ms=int(fields.get("ttl_ms", 0)),
        )


@dataclass(frozen=True)
class Previous:
    """The record an earlier delivery left, as ``enter`` found it."""

    #: The record as stored (``DeliveryRecord.decode`` reads it).
    raw: bytes | str
    #: Its remaining time to live when found, in milliseconds (-1: none).
    pttl_ms: int

    def silent_ms(self, record: DeliveryRecord, *, default_ttl_ms: int) -> int:
        """How long ago its process last refreshed it, by the server's clock (0 when unknown)."""
        if self.pttl_ms < 0:
            return 0
        return max(0, (record.ttl_ms or default_ttl_ms) - self.pttl_ms)


@dataclass(frozen=True)
class Entered:
    """What ``enter`` did with a delivery."""

    #: The record an earlier delivery left, if any.
    previous: Previous | None = None
    #: Set (and nothing written) when the delivery repeats an attempt that is over:
    #: ``"superseded"`` (a retry of it is in the broker) or ``"failed"`` (it was rejected).
    repeat: Literal["superseded", "failed"] | None = None


@dataclass(frozen=True)
class ProcState:
    """What Redis knows about a worker process."""

    status: ProcStatus
    #: Its last heartbeat, epoch milliseconds.
    beat_ms: int
    #: How it died, when a process of its host found its evidence file.
    evidence: Evidence | None = None

    def encode(self) -> str:
        body: dict[str, Any] = {"status": self.status, "beat_ms": self.beat_ms}
        if self.evidence is not None:
            body["evidence"] = {
                **asdict(self.evidence),
                "overruns": sorted(self.evidence.overruns),
            }
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, value: bytes | str) -> ProcState:
        body = json.loads(_text(value))
        status: ProcStatus = "dead"
        if body["status"] == "running":
            status = "running"
        elif body["status"] == "stopping":
            status = "stopping"
        raw = body.get("evidence")
        evidence = None
        if isinstance(raw, dict):
            evidence = Evidence(
                fatal_signal=raw.get("fatal_signal"),
                shutdown=bool(raw.get("shutdown")),
                oom_killed=bool(raw.get("oom_killed")),
                overruns=frozenset(str(m) for m in raw.get("overruns") or ()),
                last_words=str(raw.get("last_words") or ""),
            )
        return cls(status=status, beat_ms=int(body["beat_ms"]), evidence=evidence)


class CrashStore:
    """In-flight records and process heartbeats in Redis.

    Parameters:
      client: A ``redis.Redis`` client (either ``decode_responses`` setting works).
      key_prefix: The prefix of every key.
      record_ttl_ms: How long a record or a dead process's evidence outlives its writer: it must
        cover the longest wait for a redelivery (``CrashRetries`` passes its own
        ``record_ttl_ms``, 7 days by default).
      breaker: Guards every call. Defaults to a breaker of the store's own.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str,
        record_ttl_ms: int,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.client = client
        self.breaker = breaker if breaker is not None else CircuitBreaker("crash_retries")
        self.key_prefix = key_prefix
        self.record_ttl_ms = record_ttl_ms
        lua = resources.files(__package__).joinpath("lua")
        self._enter = client.register_script(lua.joinpath("enter.lua").read_text())
        self._conclude = client.register_script(lua.joinpath("conclude.lua").read_text())
        self._refresh = client.register_script(lua.joinpath("refresh.lua").read_text())
        self._restore = client.register_script(lua.joinpath("restore.lua").read_text())
        self._release = client.register_script(lua.joinpath("release.lua").read_text())

    def _call(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Through the breaker; a cluster client's outage (no node answers), which is no
        ``redis.RedisError``, raised as the ``redis.ConnectionError`` the middleware fails open on."""
        try:
            return self.breaker.call(function, *args, **kwargs)
        except RedisClusterException as exc:
            if isinstance(exc, redis.RedisError):
                raise
            raise redis.ConnectionError(str(exc)) from exc

    def message_key(self, message_id: str) -> str:
        # Percent-encoded as in ``keys.py``: an id is data and cannot reach outside the prefix.
        return f"{self.key_prefix}:crash:msg:{escape(message_id)}"

    def proc_key(self, proc_id: str) -> str:
        return f"{self.key_prefix}:crash:proc:{proc_id}"

    def done_key(self, message_id: str) -> str:
        """The message's concluded attempts, named so they share the record's cluster slot."""
        key = self.message_key(message_id)
        opening = key.find("{")
        tagged = opening != -1 and key.find("}", opening + 1) > opening + 1
        if tagged or "}" in key:
            # The prefix's hash tag decides the slot of both (ids are percent-encoded, braces
            # too). A prefix with a "}" and no tag puts them in two slots of a cluster.
            return f"{key}:done"
        return f"{{{key}}}:done"  # the whole record key as the tag: the record's own slot

    def enter(
        self,
        message_id: str,
        record: DeliveryRecord,
        *,
        attempt: int = 0,
        publish_id: str = "",
        redelivered: bool = False,
        repeat_window_ms: int = 0,
    ) -> Entered:
        """Write ``record`` as the message's delivery in flight and return the earlier record, if
        any; unless ``attempt`` (its ``retries`` option) is already over, then write nothing."""
        found = self._call(
            self._enter,
            keys=[self.message_key(message_id), self.done_key(message_id)],
            args=[
                record.encode(),
                self.record_ttl_ms,
                attempt,
                publish_id,
                int(redelivered),
                repeat_window_ms,
            ],
        )
        previous, pttl, repeat = found[0], int(found[1]), found[2] if len(found) > 2 else None
        if isinstance(repeat, (bytes, str)):
            return Entered(repeat="failed" if _text(repeat) == "failed" else "superseded")
        return Entered(Previous(previous, pttl) if isinstance(previous, (bytes, str)) else None)

    def conclude(
        self, message_id: str, kind: Literal["superseded", "failed"], attempt: int, publish_id: str = ""
    ) -> None:
        """Remember that ``attempt`` of the message is over (see ``lua/conclude.lua``)."""
        self._call(
            self._conclude,
            keys=[self.done_key(message_id)],
            args=[kind, attempt, publish_id, self.record_ttl_ms],
        )

    def restore(self, message_id: str, token: str, previous: Previous) -> bool:
        """Put ``previous`` back, with the time to live it had, while the record is still ours."""
        pttl = previous.pttl_ms if previous.pttl_ms > 0 else self.record_ttl_ms
        return bool(
            self._call(
                self._restore, keys=[self.message_key(message_id)], args=[token + " ", previous.raw, pttl]
            )
        )

    def refresh(self, deliveries: list[tuple[str, str]]) -> int:
        """Reset the time to live of each (message id, token) record still ours; how many were."""
        if not deliveries:
            return 0

        def run() -> int:
            if is_cluster(self.client):
                # Each record is a slot of its own, and a cluster pipeline refuses scripts: one
                # call per message the process runs (a handful, once per heartbeat).
                return sum(
                    int(
                        self._refresh(
                            keys=[self.message_key(message_id)], args=[token + " ", self.record_ttl_ms]
                        )
                    )
                    for message_id, token in deliveries
                )
            with self.client.pipeline(transaction=False) as pipe:
                for message_id, token in deliveries:
                    key = self.message_key(message_id)
                    self._refresh(keys=[key], args=[token + " ", self.record_ttl_ms], client=pipe)
                return sum(int(done) for done in pipe.execute())

        return int(self._call(run))

    def release(self, message_id: str, token: str) -> bool:
        """Delete the message's record if it is still the one with ``token``."""
        return bool(self._call(self._release, keys=[self.message_key(message_id)], args=[token + " "]))

    def get_record(self, message_id: str) -> bytes | str | None:
        """The raw record in flight for ``message_id`` (for inspection and tests)."""
        value: bytes | str | None = self._call(self.client.get, self.message_key(message_id))
        return value

    def put_proc(self, proc_id: str, state: ProcState, *, ttl_ms: int) -> None:
        """Write a process's heartbeat (``ttl_ms``: its liveness timeout) or death notice."""
        self._call(self.client.set, self.proc_key(proc_id), state.encode(), px=ttl_ms)

    def get_proc(self, proc_id: str) -> ProcState | None:
        """What Redis knows of process ``proc_id``; None if nothing (never seen, or expired)."""
        value = self._call(self.client.get, self.proc_key(proc_id))
        return None if value is None else ProcState.decode(value)

    def forget_proc(self, proc_id: str) -> None:
        """Delete a process's heartbeat (clean exit)."""
        self._call(self.client.delete, self.proc_key(proc_id))
