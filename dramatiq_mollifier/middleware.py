"""``Mollifier``: the Dramatiq middleware (stub; see issue 3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import Middleware
from opentelemetry.metrics import MeterProvider

from .buffer import MollifierBuffer
from .drainer import MollifierDrainer
from .models import Tenant
from .settings import MollifierSettings

__all__ = ["Mollifier", "TenantResolver"]

#: Derives the tenant of a message; None means "no tenant, never divert".
TenantResolver = Callable[[dramatiq.Message[Any]], Tenant | None]


class Mollifier(Middleware):
    def __init__(
        self,
        settings: MollifierSettings | None = None,
        *,
        client: redis.Redis | None = None,
        tenant: TenantResolver | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        raise NotImplementedError

    @property
    def buffer(self) -> MollifierBuffer:
        raise NotImplementedError

    @property
    def drainer(self) -> MollifierDrainer | None:
        raise NotImplementedError
