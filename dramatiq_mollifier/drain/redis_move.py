"""Drained messages moved inside Redis, when the broker is a ``RedisBroker`` on the buffer's server.

A drained message otherwise crosses the worker process twice: popped (a round trip, its payload
unpacked), decoded, marked, encoded again and written (a second round trip), its budget slot
bound and reported landed (two more), and acked (one more). In the worker process that drains,
under the interpreter lock its actors need, that was about 280 µs per message in
``bench_smoothing.py``: a fifth of the process's busy time during a burst, and the reason the
burst finished 15% to 35% later than without the mollifier. :class:`RedisMove` does all of it in
one script call per chunk (``buffer/lua/move.lua``): the payload never leaves Redis, and the
message gets what the drain handler would give it (the drained marker, a ``redis_message_id``
of its own), spliced into Dramatiq's JSON at the end of its options.

It only runs where it changes nothing but the cost (:func:`redis_move_for`): the broker is a
``RedisBroker`` whose client reaches the buffer's server and database, outside Redis Cluster
(the script touches the broker's keys and the buffer's), with Dramatiq's JSON encoder, no
middleware but the ``Mollifier`` defining ``before_enqueue``/``after_enqueue`` (the move calls no
hook), and no ``Abortable`` (its pending-abort check runs in the handler). It is checked on
every call, since middleware may be added late, and so is the DEBUG audit line of divert entries
(it needs each payload's sha256): while either asks for the handler, the drainer pops as before.
An entry that does not move (a ``dual_write`` copy, a queue or actor this worker does not
declare, another encoder's payload) stops the move at the head of its env, and the drainer's pop
takes it from there, so the order per env is kept.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import dramatiq
import redis

from ..buffer.codec import boundary, to_datetime
from ..buffer.drain_protocol import DrainProtocol
from ..buffer.scripts import run
from ..models import BufferEntry, EntryStatus
from ..settings import MollifierMode
from .abort import pending_abort_check
from .enqueue_hooks import EnqueueHooks
from .pace import Claim, DrainPace

__all__ = [
    "STOP_DONE",
    "STOP_FAILED",
    "STOP_NOT_MOVABLE",
    "STOP_UNKNOWN_ID",
    "Moved",
    "RedisMove",
    "redis_move_for",
]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">iiq")
# The move peeks at a few more ids than it wants, as the pop does (see drain_protocol).
_PEEK_SLACK = 16
#: Why a move stopped: the queue ran empty or the limit was reached; an id it was not given (a
#: concurrent pop; the next move peeks again); an entry that does not move (the drainer's pop
#: takes it); the call failed (nothing moved, the claim's slots given back).
STOP_DONE, STOP_UNKNOWN_ID, STOP_NOT_MOVABLE, STOP_FAILED = 0, 1, 2, -1
# The logger of the drained audit line (see acks.py): at DEBUG it wants every divert payload.
_AUDIT_LOGGER = logging.getLogger("dramatiq_mollifier.drain.acks")


class Moved(NamedTuple):
    """What one move did: the entries now on the broker (acked, payloads left in Redis) and why
    it stopped (``STOP_*``)."""

    entries: list[BufferEntry]
    stop: int

    @property
    def size(self) -> int:
        """How many entries moved."""
        return len(self.entries)


class RedisMove:
    """Moves an env's entries onto ``broker``'s queues in one script call (see the module).

    Parameters:
      broker: A ``RedisBroker`` on the buffer's Redis server and database.
      buffer: The drainer's buffer.
      pace: The drain budget whose claims the moves spend.
      mode: The drainer's mode, for entries that do not record theirs.
      middleware: The broker's ``Mollifier``: its enqueue hooks let drained messages through
        untouched, so they need not run. Any other middleware's hook stops the move.
      gate_counts: Whether the gate is on, so counts a decision for every enqueue (a moved
        message's too, as ``bypass_drained``). Defaults to True.
    """

    def __init__(
        self,
        broker: Any,
        buffer: DrainProtocol,
        pace: DrainPace,
        *,
        mode: MollifierMode,
        middleware: object,
        gate_counts: bool = True,
    ) -> None:
        #: Whether the gate would have counted each moved message's decision (it is on).
        self.gate_counts = gate_counts
        self._broker = broker
        self._middleware = middleware
        self._buffer = buffer
        self._pace = pace
        self._untagged_divert = b"1" if mode is MollifierMode.DIVERT else b"0"
        self._hooks = EnqueueHooks(broker)
        self._heartbeats = f"{broker.namespace}:__heartbeats__"

    @property
    def active(self) -> bool:
        """Whether the move may run now: no foreign enqueue hook, no DEBUG audit of divert."""
        if _AUDIT_LOGGER.isEnabledFor(logging.DEBUG):
            return False
        self._hooks.refresh()
        return not self._hooks.any_besides(self._middleware)

    def try_move(self, org_id: str, env_id: str, limit: int, claim: Claim) -> Moved:
        """:meth:`move`; a failure is logged and gives the claim's slots back (``STOP_FAILED``)."""
        try:
            return self.move(org_id, env_id, limit, claim)
        except Exception:
            logger.warning("mollifier.drain_error moving org %r env %r", org_id, env_id, exc_info=True)
            self._pace.try_bind(claim, [])
            return Moved([], STOP_FAILED)

    def move(self, org_id: str, env_id: str, limit: int, claim: Claim) -> Moved:
        """Move up to ``limit`` entries (at most ``claim.granted``), spending ``claim``: its
        slots go to the moved messages, the rest are given back."""
        buffer = self._buffer
        t = buffer.keys.tenant(org_id, env_id)
        space = t.space
        broker = self._broker
        queues = sorted(broker.get_declared_queues())
        queue_keys: list[str] = []
        for name in queues:
            queue_keys += (f"{broker.namespace}:{name}", f"{broker.namespace}:{name}.msgs")
        actors = "\n" + "\n".join(broker.get_declared_actors()) + "\n"
        with boundary("move"):
            ids = buffer.peek(t.queue, limit + _PEEK_SLACK)
            keys = (
                t.queue,
                t.envs,
                space.orgs,
                space.depth,
                *space.index_keys,
                *self._pace.keys,
                self._heartbeats,
                *queue_keys,
                *map(space.entry, ids),
            )
            reply = run(
                buffer.client,
                buffer.scripts.move,
                len(keys),
                *keys,
                org_id,
                env_id,
                limit,
                claim.prefix,
                claim.granted,
                self._pace.outstanding_ttl_ms,
                dramatiq.common.current_millis(),
                broker.broker_id,
                actors,
                self._untagged_divert,
                len(queues),
                *queues,
                *ids,
            )
        return Moved(list(_unpack(reply[1], org_id, env_id)), int(reply[0]))


def _unpack(frames: bytes, org_id: str, env_id: str) -> Iterator[BufferEntry]:
    at = 0
    while at < len(frames):
        id_len, attempts, created_at_ms = _HEADER.unpack_from(frames, at)
        at += _HEADER.size
        yield BufferEntry(
            message_id=frames[at : (at := at + id_len)].decode("utf-8"),
            org_id=org_id,
            env_id=env_id,
            payload=b"",
            status=EntryStatus.DRAINING,
            attempts=attempts,
            created_at=to_datetime(created_at_ms),
            mode=MollifierMode.DIVERT.value,
        )


def redis_move_for(
    broker: dramatiq.Broker,
    buffer: DrainProtocol,
    pace: DrainPace | None,
    *,
    mode: MollifierMode,
    middleware: object,
    gate_counts: bool = True,
) -> RedisMove | None:
    """A :class:`RedisMove` when ``broker`` is a ``RedisBroker`` on ``buffer``'s server and
    database, outside Redis Cluster, with Dramatiq's JSON encoder and no ``Abortable``; else None
    (and the drainer pops and writes through its handler, as before)."""
    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:  # pragma: no cover - redis comes with dramatiq[redis]
        return None
    if pace is None or not isinstance(broker, RedisBroker) or len(buffer.keys.groups) > 1:
        return None
    if type(dramatiq.get_encoder()) is not dramatiq.JSONEncoder or pending_abort_check(broker) is not None:
        return None
    if not all(hasattr(broker, name) for name in ("client", "namespace", "broker_id")):
        return None
    if not _same_database(broker.client, buffer.client, probe_prefix=buffer.keys.prefix):
        return None
    return RedisMove(broker, buffer, pace, mode=mode, middleware=middleware, gate_counts=gate_counts)


def _same_database(broker_client: Any, buffer_client: Any, *, probe_prefix: str) -> bool:
    """Whether both clients reach one server and database: a key written through one is read
    through the other (under the buffer's key prefix, as every key it writes). False for a
    cluster client and when either cannot be reached."""
    if not isinstance(broker_client, redis.Redis) or not isinstance(buffer_client, redis.Redis):
        return False
    probe, token = f"{probe_prefix}:same-database-probe:{uuid.uuid4().hex}", uuid.uuid4().hex
    try:
        buffer_client.set(probe, token, px=10_000)
        try:
            seen = broker_client.get(probe)
        finally:
            buffer_client.delete(probe)
    except Exception:  # not reachable now: the handler's path copes with outages
        logger.info(
            "mollifier.drainer could not tell whether the broker shares the buffer's Redis", exc_info=True
        )
        return False
    return seen is not None and (seen.decode() if isinstance(seen, bytes) else seen) == token
