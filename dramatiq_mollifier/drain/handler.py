"""The handler a worker's drainer runs on each buffered entry: back onto the broker, as it was.

Each entry is handled by the mode of the gate that wrote it (recorded in the entry), not the
drainer's. ``divert``: the buffer holds the only copy, so the stored message is decoded and
enqueued on its own queue with the ``drained`` marker (the gate lets it through), keeping its
``message_id``, args, kwargs and options. ``dual_write``: the broker already has the message, so
the entry is only audited: the drainer acks it and logs ``mollifier.drained`` with its age and
sha256.

A message that cannot be decoded can never be delivered: :class:`UndeliverableEntryError`
dead-letters it at once instead of retrying it. One whose actor or queue this broker does not
know raises :class:`UnknownDestinationError`: during a rolling deploy only newer workers may
declare it, so the drainer retries it for a grace period first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound

from ..errors import EntryCancelled, UndeliverableEntryError, UnknownDestinationError
from ..models import STATE_DRAINED, BufferEntry, marker
from ..settings import MollifierMode
from .abort import pending_abort_check
from .batch_enqueue import EnqueueMany, pipelined_enqueue_for
from .drainer import DrainHandler

__all__ = ["BrokerDrainHandler", "decode_entry", "make_drain_handler"]


def decode_entry(entry: BufferEntry) -> dramatiq.Message[Any]:
    """The Dramatiq message stored in ``entry``; :class:`UndeliverableEntryError` if garbled."""
    try:
        return dramatiq.Message.decode(entry.payload)
    except Exception as exc:
        raise UndeliverableEntryError(
            f"buffered entry {entry.message_id!r} is not a decodable Dramatiq message: {exc}"
        ) from exc


class BrokerDrainHandler:
    """The drain handler of :func:`make_drain_handler`: call it on one entry, or :meth:`many` on
    a chunk (one broker round trip for the chunk when the broker allows it).
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        mode: MollifierMode,
        enqueue: Callable[[dramatiq.Message[Any]], object] | None,
        enqueue_many: EnqueueMany | None,
        is_cancelled: Callable[[BufferEntry], bool] | None,
    ) -> None:
        self._broker = broker
        self._default_audits = mode is MollifierMode.DUAL_WRITE
        self._put = enqueue or broker.enqueue
        self._put_many = enqueue_many
        self._aborted = pending_abort_check(broker)
        self._is_cancelled = is_cancelled

    def __call__(self, entry: BufferEntry) -> None:
        if self._audits(entry):
            _audit(entry)
        else:
            self._put(self._prepare(entry, self._broker.get_declared_queues()))

    def many(self, entries: Sequence[BufferEntry]) -> list[BaseException | None]:
        """Handle each entry; one result per entry, in order: None for success, else the
        exception (as :meth:`__call__` would have raised it)."""
        if self._put_many is None:
            return [_outcome(self, entry) for entry in entries]
        results: list[BaseException | None] = [None] * len(entries)
        queues = self._broker.get_declared_queues()
        writes: list[tuple[int, dramatiq.Message[Any]]] = []
        for index, entry in enumerate(entries):
            try:
                if self._audits(entry):
                    _audit(entry)
                else:
                    writes.append((index, self._prepare(entry, queues)))
            except BaseException as exc:  # as the pool treats a handler's exception
                results[index] = exc
        if writes:
            written = self._put_many([message for _, message in writes])
            for (index, _), error in zip(writes, written, strict=True):
                results[index] = error
        return results

    def _audits(self, entry: BufferEntry) -> bool:
        return entry.mode == MollifierMode.DUAL_WRITE.value or (entry.mode is None and self._default_audits)

    def _prepare(self, entry: BufferEntry, queues: set[str]) -> dramatiq.Message[Any]:
        """The message to write for ``entry``, checked (actor, queue, abort, cancel) last thing."""
        message = decode_entry(entry)
        try:
            self._broker.get_actor(message.actor_name)
        except ActorNotFound:
            raise UnknownDestinationError(
                f"buffered message {entry.message_id!r} is for actor {message.actor_name!r}, "
                "which this broker does not declare",
                actor_name=message.actor_name,
            ) from None
        if message.queue_name not in queues:
            raise UnknownDestinationError(
                f"buffered message {entry.message_id!r} is for queue {message.queue_name!r}, "
                "which this broker does not declare",
                actor_name=message.actor_name,
            )
        # Cancel wins over a drain that popped the entry a moment before: checked last thing.
        if self._aborted is not None and self._aborted(message):
            raise EntryCancelled(f"buffered message {entry.message_id!r} has a pending abort")
        if self._is_cancelled is not None and self._is_cancelled(entry):
            raise EntryCancelled(f"buffered message {entry.message_id!r} was cancelled")
        # Decoded afresh from the entry: the message is this handler's own, marked in place (a
        # copy per drained message was a twentieth of the drain's interpreter time).
        message.options.update(marker(STATE_DRAINED, message.message_id))
        return message


def _outcome(handler: DrainHandler, entry: BufferEntry) -> BaseException | None:
    try:
        handler(entry)
    except BaseException as exc:  # as the pool treats a handler's exception
        return exc
    return None


def make_drain_handler(
    broker: dramatiq.Broker,
    *,
    mode: MollifierMode = MollifierMode.DIVERT,
    enqueue: Callable[[dramatiq.Message[Any]], object] | None = None,
    enqueue_many: EnqueueMany | None = None,
    is_cancelled: Callable[[BufferEntry], bool] | None = None,
) -> BrokerDrainHandler:
    """The handler that treats each entry by the mode that wrote it: re-enqueue on ``broker``
    (divert) or audit only (dual_write). ``mode`` is for entries that do not say (written by an
    older version): a fleet that mixes modes during a rollout loses and duplicates nothing.
    ``enqueue`` puts a message on the broker (see :func:`.publisher.writers_for`); defaults to
    ``broker.enqueue``. ``enqueue_many`` puts a chunk's messages on the broker at once (see
    :mod:`.batch_enqueue`); defaults to a pipelined enqueue on a ``RedisBroker`` when no
    ``enqueue`` is given, else none (message by message).

    ``is_cancelled`` (a :class:`~.cancel_check.CancelCheck`) commits each entry right before its
    broker write: a message an operator cancelled after the pop raises :class:`EntryCancelled`
    instead of reaching the broker (once committed, a cancel reports it too late). A message with
    a pending dramatiq-abort abort raises it too, when the broker has the ``Abortable``
    middleware; one whose lease passed to another drainer raises ``LeaseLost``.
    """
    if enqueue_many is None and enqueue is None:
        enqueue_many = pipelined_enqueue_for(broker)
    return BrokerDrainHandler(
        broker, mode=mode, enqueue=enqueue, enqueue_many=enqueue_many, is_cancelled=is_cancelled
    )


def _audit(entry: BufferEntry) -> None:
    # The broker holds the real copy; the drainer's mollifier.drained line is the audit record.
    # Decoding proves the copy is intact: one that is not is dead-lettered, for operators to see.
    decode_entry(entry)
