"""Settling what the handlers did: ack successes in one call, requeue or dead-letter failures,
give back entries whose handler never started.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from ..buffer.drain_protocol import DrainProtocol
from ..errors import UndeliverableEntryError
from ..models import BufferEntry
from ..telemetry import DrainResultKind, Telemetry
from .handler_pool import Completion, NotStarted

__all__ = ["Settler"]

logger = logging.getLogger(__name__)


class Settler:
    """Settles completions on the buffer, and records what was drained.

    Parameters:
      protocol: The buffer's drain side.
      telemetry: Where drain metrics go.
      max_attempts: Handler attempts before an entry is dead-lettered.
      is_retryable: Whether a handler exception may be retried.
    """

    def __init__(
        self,
        protocol: DrainProtocol,
        *,
        telemetry: Telemetry,
        max_attempts: int,
        is_retryable: Callable[[BaseException], bool],
    ) -> None:
        self._buffer = protocol
        self._telemetry = telemetry
        self.max_attempts = max_attempts
        self._is_retryable = is_retryable

    def settle(self, batch: Iterable[Completion]) -> tuple[int, int]:
        """Ack, requeue, dead-letter or release each completion; (acked, failed) counts."""
        failed = 0
        succeeded: list[BufferEntry] = []
        not_started: list[BufferEntry] = []
        for entry, error in batch:
            if error is None:
                succeeded.append(entry)
            elif isinstance(error, NotStarted):
                not_started.append(entry)
            else:
                self._settle_failure(entry, error)
                failed += 1
        self.release(not_started)
        if not succeeded:
            return 0, failed
        try:
            self._buffer.ack_entries(succeeded)
        except Exception:
            logger.warning(
                "mollifier.drain_error acking %d entries (they stay DRAINING until their lease expires)",
                len(succeeded),
                exc_info=True,
            )
            return 0, failed + 1
        self._record_acked(succeeded)
        return len(succeeded), failed

    def settle_alone(self, completion: Completion) -> None:
        """Settle one entry from a handler thread, after the tick gave up waiting for it."""
        entry, error = completion
        if isinstance(error, NotStarted):
            self.release([entry])
            return
        try:
            if error is None:
                self._buffer.ack(entry.message_id, org_id=entry.org_id, env_id=entry.env_id)
                self._record_acked([entry])
            else:
                self._settle_failure(entry, error)
        except Exception:
            logger.warning(
                "mollifier.drain_error settling %r after shutdown", entry.message_id, exc_info=True
            )

    def _settle_failure(self, entry: BufferEntry, error: BaseException) -> None:
        """Requeue or dead-letter after a handler error (logged if the buffer call itself fails)."""
        try:
            retryable = not isinstance(error, UndeliverableEntryError) and self._retryable(error)
            if retryable and entry.attempts + 1 < self.max_attempts:
                self._buffer.requeue(entry.message_id, org_id=entry.org_id, env_id=entry.env_id)
                kind, level, event = DrainResultKind.REQUEUED, logging.WARNING, "mollifier.drain_retry"
            else:
                self._buffer.fail(
                    entry.message_id,
                    code=type(error).__name__,
                    message=str(error),
                    org_id=entry.org_id,
                    env_id=entry.env_id,
                )
                kind, level, event = DrainResultKind.FAILED, logging.ERROR, "mollifier.drain_failed"
        except Exception:
            logger.warning(
                "mollifier.drain_error settling %r (it stays DRAINING until its lease expires)",
                entry.message_id,
                exc_info=True,
            )
            return
        logger.log(
            level,
            "%s message_id=%r org_id=%r env_id=%r attempts=%d: %s: %s",
            event,
            entry.message_id,
            entry.org_id,
            entry.env_id,
            entry.attempts + 1,
            type(error).__name__,
            error,
            # The traceback once, when the entry is given up on.
            exc_info=error if kind is DrainResultKind.FAILED else None,
        )
        self._telemetry.record_drained(kind)

    def release(self, entries: Sequence[BufferEntry]) -> None:
        if not entries:
            return
        try:
            self._buffer.release(entries)
        except Exception:
            logger.warning(
                "mollifier.drain_error giving back %d entries not handled before the stop "
                "(they stay DRAINING until their lease expires)",
                len(entries),
                exc_info=True,
            )

    def _retryable(self, error: BaseException) -> bool:
        try:
            return self._is_retryable(error)
        except Exception:
            logger.warning("mollifier.drain_error in is_retryable; retrying", exc_info=True)
            return True

    def _record_acked(self, entries: Sequence[BufferEntry]) -> None:
        self._telemetry.record_drained(DrainResultKind.ACKED, len(entries))
        now_ms = time.time() * 1000
        log = logger.isEnabledFor(logging.INFO)
        for entry in entries:
            age_ms = max(0.0, now_ms - entry.created_at.timestamp() * 1000)
            self._telemetry.record_time_in_buffer(age_ms)
            if log:
                logger.info(
                    "mollifier.drained message_id=%r org_id=%r env_id=%r attempts=%d age_ms=%d sha256=%s",
                    entry.message_id,
                    entry.org_id,
                    entry.env_id,
                    entry.attempts,
                    age_ms,
                    hashlib.sha256(entry.payload).hexdigest(),
                )
