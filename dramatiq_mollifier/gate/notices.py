"""What the gate logs about its decisions: the ``mollifier.*`` info lines (message id, org, env:
never metric attributes) and the rate-limited warnings that point a heavy producer at a setting."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq

from ..models import Tenant
from ..settings import MollifierSettings
from ..telemetry import FailOpenStage, ThrottledLog

__all__ = ["GateNotices"]

logger = logging.getLogger("dramatiq_mollifier.gate.cascade")


class GateNotices:
    """The gate's log lines; warnings at most once per 10 s per kind (see ``ThrottledLog``)."""

    def __init__(self, settings: MollifierSettings) -> None:
        self._settings = settings
        self._warnings = ThrottledLog(logger)

    def would_mollify(
        self, message: dramatiq.Message[Any], tenant: Tenant, count: int | None, fleet_wide: bool
    ) -> None:
        logger.info(
            "mollifier.would_mollify message_id=%r org_id=%r env_id=%r count=%s reason=%s",
            message.message_id,
            tenant.org_id,
            tenant.env_id,
            "?" if count is None else count,
            "global_rate" if fleet_wide else "per_env_rate",
        )

    def buffered(self, message: dramatiq.Message[Any], tenant: Tenant, fleet_wide: bool) -> None:
        settings = self._settings
        logger.info(
            "mollifier.buffered message_id=%r org_id=%r env_id=%r mode=%s",
            message.message_id,
            tenant.org_id,
            tenant.env_id,
            settings.mode.value,
        )
        if fleet_wide:
            self._warnings.throttled_warning(
                "mollify_global",
                "mollifier: all envs together sent more than trip_global_threshold=%d messages in "
                "trip_window_ms=%d, so enrolled sends are buffered and drained at the workers' "
                "pace. Raise MOLLIFIER_TRIP_GLOBAL_THRESHOLD if the fleet legitimately sends this "
                "much.",
                settings.trip_global_threshold,
                settings.trip_window_ms,
            )
            return
        self._warnings.throttled_warning(
            "mollify",
            "mollifier: org %r env %r sent more than trip_threshold=%d messages in "
            "trip_window_ms=%d, so its sends are buffered and drained at the workers' pace. A "
            "producer that legitimately sends this much needs a higher MOLLIFIER_TRIP_THRESHOLD "
            "(or its actor declared with mollifier=False).",
            tenant.org_id,
            tenant.env_id,
            settings.trip_threshold,
            settings.trip_window_ms,
        )

    def duplicate(self, message: dramatiq.Message[Any], tenant: Tenant) -> None:
        self._warnings.throttled_warning(
            "duplicate_id",
            "mollifier: message %r of org %r env %r is already in the buffer (queued, draining or "
            "dead-lettered); this re-send goes to the broker instead.",
            message.message_id,
            tenant.org_id,
            tenant.env_id,
        )

    def fail_open(self, stage: FailOpenStage, msg: str, *args: Any, exc: Exception | None = None) -> None:
        if exc is not None:
            msg += " %s: %s"
            args = (*args, type(exc).__name__, exc)
        self._warnings.throttled_warning(stage.value, "mollifier fail-open (%s): " + msg, stage.value, *args)
