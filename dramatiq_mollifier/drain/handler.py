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

from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.errors import ActorNotFound

from ..errors import EntryCancelled, UndeliverableEntryError, UnknownDestinationError
from ..models import STATE_DRAINED, BufferEntry, marker
from ..settings import MollifierMode
from .abort import pending_abort_check
from .drainer import DrainHandler

__all__ = ["decode_entry", "make_drain_handler"]


def decode_entry(entry: BufferEntry) -> dramatiq.Message[Any]:
    """The Dramatiq message stored in ``entry``; :class:`UndeliverableEntryError` if garbled."""
    try:
        return dramatiq.Message.decode(entry.payload)
    except Exception as exc:
        raise UndeliverableEntryError(
            f"buffered entry {entry.message_id!r} is not a decodable Dramatiq message: {exc}"
        ) from exc


def make_drain_handler(
    broker: dramatiq.Broker,
    *,
    mode: MollifierMode = MollifierMode.DIVERT,
    enqueue: Callable[[dramatiq.Message[Any]], object] | None = None,
    is_cancelled: Callable[[BufferEntry], bool] | None = None,
) -> DrainHandler:
    """The handler that treats each entry by the mode that wrote it: re-enqueue on ``broker``
    (divert) or audit only (dual_write). ``mode`` is for entries that do not say (written by an
    older version): a fleet that mixes modes during a rollout loses and duplicates nothing.
    ``enqueue`` puts a message on the broker (see :func:`.publisher.enqueue_for`); defaults to
    ``broker.enqueue``.

    ``is_cancelled`` (a :class:`~.cancel_check.CancelCheck`) commits each entry right before its
    broker write: a message an operator cancelled after the pop raises :class:`EntryCancelled`
    instead of reaching the broker (once committed, a cancel reports it too late). A message with
    a pending dramatiq-abort abort raises it too, when the broker has the ``Abortable``
    middleware; one whose lease passed to another drainer raises ``LeaseLost``.
    """
    default_audits = mode is MollifierMode.DUAL_WRITE
    put = enqueue or broker.enqueue
    aborted = pending_abort_check(broker)

    def handle(entry: BufferEntry) -> None:
        if entry.mode == MollifierMode.DUAL_WRITE.value or (entry.mode is None and default_audits):
            _audit(entry)
        else:
            redeliver(entry)

    def redeliver(entry: BufferEntry) -> None:
        message = decode_entry(entry)
        try:
            broker.get_actor(message.actor_name)
        except ActorNotFound:
            raise UnknownDestinationError(
                f"buffered message {entry.message_id!r} is for actor {message.actor_name!r}, "
                "which this broker does not declare",
                actor_name=message.actor_name,
            ) from None
        if message.queue_name not in broker.get_declared_queues():
            raise UnknownDestinationError(
                f"buffered message {entry.message_id!r} is for queue {message.queue_name!r}, "
                "which this broker does not declare",
                actor_name=message.actor_name,
            )
        # Cancel wins over a drain that popped the entry a moment before: checked last thing.
        if aborted is not None and aborted(message):
            raise EntryCancelled(f"buffered message {entry.message_id!r} has a pending abort")
        if is_cancelled is not None and is_cancelled(entry):
            raise EntryCancelled(f"buffered message {entry.message_id!r} was cancelled")
        put(message.copy(options=marker(STATE_DRAINED, message.message_id)))

    return handle


def _audit(entry: BufferEntry) -> None:
    # The broker holds the real copy; the drainer's mollifier.drained line is the audit record.
    # Decoding proves the copy is intact: one that is not is dead-lettered, for operators to see.
    decode_entry(entry)
