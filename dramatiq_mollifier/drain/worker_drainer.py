"""The drainer of one worker process: one thread, from worker boot to worker shutdown.

The :class:`~dramatiq_mollifier.Mollifier` middleware starts one in ``after_worker_boot``
and stops it in ``before_worker_shutdown``, so producer-only processes (web servers), which never
boot a worker, never drain. ``dramatiq-mollifier drain`` runs one on its own.

Configuration errors are raised when :class:`MollifierSettings` is built, at import time of the
user's module, since Dramatiq swallows ordinary exceptions raised by worker-boot hooks. Nothing
here does I/O on start: a Redis outage at boot shows up as failing ticks, which the drainer logs
and retries with backoff, and never takes the worker down.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import redis

from ..buffer import MollifierBuffer
from ..buffer.clients import is_cluster
from ..buffer.drain_protocol import DrainProtocol
from ..buffer.health import layout_problem
from ..buffer.rules import RulesView, read_rules
from ..settings import MollifierMode, MollifierSettings
from ..telemetry import Telemetry
from .actor_registry import ActorRegistry
from .cancel_check import CancelCheck
from .connections import drain_client
from .drainer import MollifierDrainer
from .gauges import FleetGauges
from .handler import make_drain_handler
from .hooks import DrainHooks
from .pace import pace_for
from .publisher import writers_for
from .redis_move import redis_move_for

__all__ = ["WorkerDrainer"]

logger = logging.getLogger(__name__)


class WorkerDrainer:
    """Owns the drainer of one process.

    Parameters:
      settings: The ``drain_*`` settings size the drainer; ``mode`` picks its handler;
        ``drain_shutdown_timeout_ms`` bounds :meth:`stop`.
      buffer: The buffer to drain.
      telemetry: Where drain metrics go.
      rules: The operator's pauses and weights. Defaults to a view of its own on ``buffer``.
      middleware: The ``Mollifier`` that runs this drainer: its enqueue hooks let drained
        messages through untouched (see :mod:`.redis_move`). None: every hook counts.
    """

    def __init__(
        self,
        *,
        settings: MollifierSettings,
        buffer: MollifierBuffer,
        telemetry: Telemetry,
        rules: RulesView | None = None,
        middleware: object | None = None,
    ) -> None:
        self.settings = settings
        self.middleware = middleware
        self.buffer = buffer
        self.telemetry = telemetry
        self.rules = rules or RulesView(lambda: read_rules(buffer.client, buffer.keys))
        self._drainer: MollifierDrainer | None = None
        self._client: redis.Redis | None = None

    @property
    def drainer(self) -> MollifierDrainer | None:
        """The drainer once :meth:`prepare` or :meth:`start` has built it; None before."""
        return self._drainer

    def prepare(self, broker: dramatiq.Broker) -> bool:
        """Build the drainer without starting it; False if the key layout refuses it.

        The middleware calls this from ``before_worker_boot``, before Dramatiq's consumers run.
        Work done in ``after_worker_boot`` (imports, connections, the layout check: 30 to 55 ms)
        delays the ready event the ``dramatiq`` CLI waits for while messages already run, and
        a message that kills the process while it sets that event leaves the event's lock,
        shared with the main process, held for good: the CLI froze in 24 of 52 restarts of a
        crash loop before this moved, and in none of 52 after.
        """
        if self._drainer is None and not self._layout_refused():
            self._drainer = self._build(broker)
        return self._drainer is not None

    def start(self, broker: dramatiq.Broker) -> None:
        """Start draining onto ``broker`` in a background thread; nothing if already draining."""
        if self._drainer is not None and self._drainer.running:
            return
        if not self.prepare(broker):
            return
        assert self._drainer is not None
        self._drainer.start()
        logger.info(
            "mollifier.drainer started (mode=%s, concurrency=%d, batch_size=%d, prefix=%r)",
            self.settings.mode.value,
            self.settings.drain_concurrency,
            self.settings.drain_batch_size,
            self.settings.key_prefix,
        )

    def _build(self, broker: dramatiq.Broker) -> MollifierDrainer:
        settings = self.settings
        # Connections of its own: timeouts for large replies and idle blocks, no retries.
        client = drain_client(self.buffer.client, socket_timeout_ms=settings.drain_socket_timeout_ms)
        self._client = client
        drain_buffer = MollifierBuffer(client, **settings.buffer_options)
        cancelled = CancelCheck(client, drain_buffer.keys)
        # RabbitMQ: a few connections shared by every handler thread, kept across restarts,
        # a chunk per hand-over; RedisBroker: a chunk's messages in one round trip.
        enqueue, enqueue_many = writers_for(broker, connections=settings.drain_broker_connections)
        # Audits (dual_write) never reach the broker: nothing to pace. On the drain's own
        # connections: a claim is not safe to run twice, as the send path's retry would.
        pace = pace_for(settings, client) if settings.mode is MollifierMode.DIVERT else None
        # Which actors this process delivers, announced for drainers of split fleets.
        actors = ActorRegistry(client, drain_buffer.keys.drain_actors, broker.get_declared_actors)
        gauges = FleetGauges(self.buffer, self.telemetry, in_use=pace.in_use if pace is not None else None)

        def report() -> None:  # about once a second, from the drainer's housekeeping
            gauges.report()
            actors.announce()

        return MollifierDrainer(
            drain_buffer,
            make_drain_handler(
                broker,
                mode=settings.mode,
                enqueue=enqueue,
                enqueue_many=enqueue_many,
                is_cancelled=cancelled,
            ),
            concurrency=settings.drain_concurrency,
            max_in_flight=settings.drain_max_in_flight,
            max_attempts=settings.drain_max_attempts,
            retry_delay_ms=settings.drain_retry_delay_ms,
            unknown_actor_grace_ms=settings.drain_unknown_actor_grace_ms,
            max_orgs_per_tick=settings.drain_max_orgs_per_tick,
            poll_interval_ms=settings.drain_poll_interval_ms,
            batch_size=settings.drain_batch_size,
            batch_max_bytes=settings.drain_batch_max_bytes,
            idle_wait_ms=settings.drain_idle_wait_ms,
            telemetry=self.telemetry,
            hooks=DrainHooks(
                rules=self.rules.current,
                report_gauges=report,
                popped=cancelled.popped,
                declared_elsewhere=actors.declares,
            ),
            pace=pace,
            # A RedisBroker on the buffer's Redis: chunks move there, not through this process.
            move=redis_move_for(
                broker,
                DrainProtocol(drain_buffer),
                pace,
                mode=settings.mode,
                middleware=self.middleware,
                gate_counts=settings.enabled,
            ),
        )

    def _layout_refused(self) -> bool:
        """Whether the recorded key layout differs from this process's (then it must not drain)."""
        try:
            problem = layout_problem(self.buffer.client, self.buffer.keys)
        except Exception:  # Redis unwell: the drainer copes with outages (and checks next start)
            return False
        if problem is not None:
            logger.error("mollifier.layout_mismatch the drainer does not start: %s", problem)
        return problem is not None

    def stop(self) -> bool:
        """Stop the drainer within ``drain_shutdown_timeout_ms``; True if it stopped in time.

        Called from ``before_worker_shutdown``: Dramatiq starts its own shutdown timeout
        (``dramatiq --worker-shutdown-timeout``) only after this returns, so a worker's shutdown
        takes up to the sum of both, and the settings check that the drainer's share fits in
        ``supervisor_grace_period_ms``.
        """
        if self._drainer is None:
            return True
        timeout_ms = self.settings.drain_shutdown_timeout_ms
        stopped = self._drainer.stop(timeout_ms)
        if stopped:
            if self._client is not None:
                # The drainer's own connections: closed now rather than by the garbage collector
                # (a later start reconnects on first use).
                client: Any = self._client
                if is_cluster(client):
                    client.disconnect_connection_pools()  # a RedisCluster has a pool per node
                else:
                    client.connection_pool.disconnect()
            logger.info("mollifier.drainer stopped")
        else:
            logger.warning(
                "mollifier.drainer still had handlers running after drain_shutdown_timeout_ms=%d; "
                "their entries stay leased and are reclaimed if they never finish",
                timeout_ms,
            )
        return stopped
