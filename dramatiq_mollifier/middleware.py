"""``Mollifier``: the Dramatiq middleware. ``broker.add_middleware(Mollifier(...))`` is the integration.

On every enqueue the :class:`~dramatiq_mollifier.gate.Gate` decides; this module applies the
decision to the message (the admitted marker, the diversion through :mod:`.interception`) and
starts and stops the drainer with the worker.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import dramatiq
import redis
import redis.asyncio
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from opentelemetry.metrics import MeterProvider

from .breaker import CircuitBreaker
from .buffer import DEFAULT_SOCKET_TIMEOUT_MS, MollifierBuffer
from .buffer.controls import TenantControls
from .buffer.health import check_layout, layout_problem, warn_about_risks
from .buffer.rules import RulesView, read_rules
from .drain.pace import pace_for
from .drain.slot_release import SlotReleaser
from .errors import DuplicateMollifierError, MiddlewareConfigurationError, MollifierConfigurationError
from .gate import interception
from .gate.cascade import OPT_OUT_OPTION, Gate, TenantResolver
from .gate.flags import FLAG_REFRESH_MS, OrgFlags, OrgFlagsView
from .gate.holds import TenantHolds
from .models import STATE_ADMITTED, STATE_DRAINED, STATE_OPTION, marker
from .redis_urls import slow_timeouts
from .settings import MollifierSettings
from .telemetry import FailOpenStage, Telemetry, ThrottledLog

if TYPE_CHECKING:
    from .drain.drainer import MollifierDrainer
    from .drain.worker_drainer import WorkerDrainer

__all__ = ["Mollifier", "TenantResolver"]

logger = logging.getLogger(__name__)

#: An injected client that retries a failed command more often than this can stall ``send()``.
MAX_CLIENT_RETRIES = 1


class Mollifier(Middleware):
    """Diverts a tripped, enrolled tenant's messages into a Redis buffer instead of the broker.

    Parameters:
      settings: Every knob. Defaults to ``MollifierSettings()``, read from ``MOLLIFIER_*``.
      client: The ``redis.Redis`` client (``decode_responses=False``) for the buffer, trip
        counters and flags. Defaults to one for ``settings.redis_url`` with bounded timeouts
        (see :meth:`MollifierBuffer.from_url`). It connects on first use.
      tenant: Derives a message's :class:`~dramatiq_mollifier.Tenant`, or None for none.
        Defaults to the message options ``org_id`` and ``env_id`` (absent: ``"default"``).
      meter_provider: Where the metrics go. Defaults to OpenTelemetry's global provider.
      flag_refresh_ms: How often runtime org flags are re-read, at most. Defaults to 1 second.

    An actor declared with ``mollifier=False`` (or a message sent with that option) is never
    diverted. Add this middleware last (the default), so the buffered copy of a message carries
    what the other middleware's ``before_enqueue`` set.
    """

    def __init__(
        self,
        settings: MollifierSettings | None = None,
        *,
        client: redis.Redis | None = None,
        tenant: TenantResolver | None = None,
        meter_provider: MeterProvider | None = None,
        flag_refresh_ms: int = FLAG_REFRESH_MS,
    ) -> None:
        if settings is not None and not isinstance(settings, MollifierSettings):
            raise MollifierConfigurationError(
                f"Mollifier takes a MollifierSettings instance, got {settings!r}: "
                "Mollifier(MollifierSettings(...)), or Mollifier() to read MOLLIFIER_*"
            )
        if tenant is not None and not callable(tenant):
            raise MollifierConfigurationError(
                f"tenant must be a callable from a message to a Tenant (or None), got {tenant!r}"
            )
        self.settings = settings if settings is not None else MollifierSettings()
        # Read first thing on every enqueue: a plain attribute, so the disabled path is one check.
        self._enabled = self.settings.enabled
        if client is None:
            self._buffer = MollifierBuffer.from_url(self.settings.redis_url, **self.settings.buffer_options)
            slow = slow_timeouts(self.settings.redis_url, DEFAULT_SOCKET_TIMEOUT_MS)
            if slow is not None:
                logger.warning(
                    "mollifier.slow_send_path MOLLIFIER_REDIS_URL sets %s: while that Redis is stalled, "
                    "each send() may wait that long before failing open (the default is %d ms).",
                    slow,
                    DEFAULT_SOCKET_TIMEOUT_MS,
                )
        else:
            _check_client(client)
            self._buffer = MollifierBuffer(client, **self.settings.buffer_options)
        self.telemetry = Telemetry(meter_provider)
        self._warnings = ThrottledLog(logger)
        # One breaker for every call to the mollifier's Redis on the send path.
        self.breaker = CircuitBreaker(
            "mollifier",
            failure_threshold=self.settings.breaker_failure_threshold,
            cooldown_ms=self.settings.breaker_cooldown_ms,
        )
        self.flags = OrgFlagsView(
            OrgFlags(self._buffer.client, key_prefix=self.settings.key_prefix),
            refresh_ms=flag_refresh_ms,
            on_error=self._flags_failed,
            breaker=self.breaker,
        )
        buffer = self._buffer
        # Nothing is diverted before the key layout is known to match the fleet's: an entry
        # written under another layout is one no drainer reads. A forked child inherits what
        # its parent knew, and checks for itself if that was nothing yet.
        self._layout_confirmed = False
        #: The operator's pauses, caps and weights, re-read every 500 ms in the background.
        self.rules = RulesView(lambda: read_rules(buffer.client, buffer.keys))
        self.gate = Gate(
            self.settings,
            backend=self._buffer,
            telemetry=self.telemetry,
            runtime_enrolled=self.flags.enrolled,
            tenant=tenant,
            breaker=self.breaker,
            layout_confirmed=self._layout_ok,
            holds=TenantHolds(
                self.settings,
                backend=buffer,
                telemetry=self.telemetry,
                rules=self.rules.current,
                breaker=self.breaker,
                layout_confirmed=self._layout_ok,
            ),
        )
        if self._enabled:
            self.rules.current()  # starts the background refresh: a pause holds from the first send
            warn_about_risks(buffer.client, wait_replicas=self.settings.buffer_wait_replicas)
            #: Checks the key layout at startup; a mismatch turns the gate off.
            self.layout_check = check_layout(
                buffer.client, buffer.keys, self._refuse_layout, self._layout_matches
            )
        self._worker_drainer: WorkerDrainer | None = None
        self._draining = False
        self._controls: TenantControls | None = None
        # The drain budget: workers give a slot back when they start a drained message.
        pace = pace_for(self.settings, self._buffer.client)
        # Freed in batches off the worker threads, which never wait for Redis for it.
        self._slots = SlotReleaser(release=pace.release) if pace is not None else None

    @property
    def buffer(self) -> MollifierBuffer:
        """The buffer diverted messages go to."""
        return self._buffer

    @property
    def controls(self) -> TenantControls:
        """Look up, cancel, pause, cap and weigh buffered work (these settings' buffer)."""
        if self._controls is None:
            self._controls = TenantControls(
                self._buffer.client, key_prefix=self.settings.key_prefix, settings=self.settings
            )
        return self._controls

    @property
    def drainer(self) -> MollifierDrainer | None:
        """This process's drainer, once a worker has booted one; None otherwise."""
        return self._worker_drainer.drainer if self._worker_drainer is not None else None

    @property
    def actor_options(self) -> set[str]:
        return {OPT_OUT_OPTION}

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        # Emitted for every actor, and replayed by add_middleware for actors declared earlier:
        # the earliest point at which this middleware sees the broker.
        self._check_alone_on(broker)
        if not self._enabled:
            return
        interception.install(broker)
        if actor.options.get(OPT_OUT_OPTION) is False:
            self.gate.opt_out(actor.actor_name)

    def before_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        # Raised through the actor's declaration (a MiddlewareError): the app fails at import
        self._check_alone_on(broker)
        opt_in = actor.options.get(OPT_OUT_OPTION)
        if opt_in is not None and not isinstance(opt_in, bool):  # only False opts out
            raise MiddlewareConfigurationError(
                f"actor {actor.actor_name!r}: {OPT_OUT_OPTION}= must be True or False, got {opt_in!r}"
            )

    def _check_alone_on(self, broker: dramatiq.Broker) -> None:
        """Refuse a second Mollifier on the broker: raised from ``add_middleware`` (actors were
        declared), from an actor's declaration and from a worker's boot."""
        mollifiers = [middleware for middleware in broker.middleware if isinstance(middleware, Mollifier)]
        if len(mollifiers) > 1:
            raise DuplicateMollifierError(
                f"the broker has {len(mollifiers)} Mollifier middleware; add one (its settings "
                f"cover every org and env; several buffers on one broker are not supported)"
            )

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        if not self._enabled:
            return
        call = interception.current_call(broker, message)
        if call is not None:
            if call.decided:
                # The broker retried a publish (RabbitMQ): one message, one decision.
                return
            call.decided = True
        elif not interception.is_installed(broker):
            # A broker with no actor declared yet: this message cannot be diverted, the next can.
            interception.install(broker)
        decision = self.gate.decide(message, delay, intercepted=call is not None)
        if decision.admit:
            message.options.update(marker(STATE_ADMITTED, message.message_id))
        if decision.divert:
            interception.divert(message, decision.reason.value)

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._check_alone_on(broker)
        # The drainer is built here, before Dramatiq's consumers run, and only started once they
        # do: see WorkerDrainer.prepare for why boot work must not run after them.
        self._draining = self.settings.run_drainer and self._worker_drainer_for().prepare(broker)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._draining:
            # Every worker the broker boots drains: a process that stopped one worker and starts
            # another restarts the drainer the first one's shutdown stopped (start does nothing
            # while it still runs).
            self._worker_drainer_for().start(broker)
        elif not self.settings.run_drainer and self.settings.drainer_enabled is None:
            # Off by the kill switch, not by choice: say so if messages are left buffered.
            threading.Thread(target=self._warn_if_buffered, name="mollifier-boot-check", daemon=True).start()

    def _worker_drainer_for(self) -> WorkerDrainer:
        if self._worker_drainer is None:
            from .drain.worker_drainer import WorkerDrainer

            self._worker_drainer = WorkerDrainer(
                settings=self.settings,
                buffer=self._buffer,
                telemetry=self.telemetry,
                rules=self.rules,
                middleware=self,
            )
        return self._worker_drainer

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._started(message)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        # A message skipped before this middleware's before_process_message still frees its slot.
        self._started(message)

    def _started(self, message: MessageProxy) -> None:
        if self._slots is not None and message.options.get(STATE_OPTION) == STATE_DRAINED:
            self._slots.add(message.message_id)

    def _warn_if_buffered(self) -> None:
        """One look at the buffer when the kill switch also stopped the drainers: a rollback
        that set ``enabled=false`` alone left buffered messages undelivered without a word."""
        try:
            depth = self._buffer.depth()
        except Exception:
            logger.debug("mollifier: reading the buffer's depth at worker boot failed", exc_info=True)
            return
        if depth:
            logger.warning(
                "mollifier.undrained the buffer holds %d messages and no drainer runs here "
                "(MOLLIFIER_ENABLED=false turns the drainer off too): set "
                "MOLLIFIER_DRAINER_ENABLED=true on these workers, or run dramatiq-mollifier drain, "
                "to deliver them",
                depth,
            )

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._worker_drainer is not None:
            self._worker_drainer.stop()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._slots is not None:
            self._slots.stop()

    def _layout_ok(self) -> bool:
        """Whether the key layout is known to match the fleet's (the gate asks before it calls
        Redis); checked in the sending thread while the startup check has not answered (Redis
        was unreachable, or this is a forked child that started before it did). Through the
        breaker: while Redis is unreachable this costs a send what a gated send costs."""
        if self._layout_confirmed:
            return True
        if not self.breaker.allow():
            return False
        buffer = self._buffer
        try:
            problem = layout_problem(buffer.client, buffer.keys)
        except Exception as exc:
            self.breaker.record(exc)
            return False
        self.breaker.record_success()
        if problem is not None:
            logger.error("mollifier.layout_mismatch %s", problem)
            self._refuse_layout(problem)
            return False
        self._layout_matches()
        return True

    def _layout_matches(self) -> None:
        self._layout_confirmed = True

    def _refuse_layout(self, problem: str) -> None:
        # Fail open: every send goes to the broker, as if the mollifier were not there.
        self._enabled = False

    def _flags_failed(self, exc: Exception) -> None:
        self.telemetry.record_fail_open(FailOpenStage.FLAGS)
        self._warnings.throttled_warning(
            "flags",
            "mollifier fail-open (flags): could not read the runtime org flags, so only the static "
            "enabled_orgs enrol orgs until the next refresh. %s: %s",
            type(exc).__name__,
            exc,
        )


def _check_client(client: redis.Redis) -> None:
    """Refuse an asyncio client (its calls return coroutines, never results); warn about one
    that could make ``send()`` hang while Redis is unwell."""
    if isinstance(client, redis.asyncio.Redis | redis.asyncio.RedisCluster):
        raise MollifierConfigurationError("Mollifier needs a synchronous Redis client, got an asyncio one")
    options = client.get_connection_kwargs()
    retry = options.get("retry")
    retries = getattr(retry, "_retries", 0) if retry is not None else 0
    if options.get("socket_timeout") is None or retries < 0 or retries > MAX_CLIENT_RETRIES:
        logger.warning(
            "The Redis client given to Mollifier has socket_timeout=%r and %r retries: while its "
            "Redis is stalled or down, each send() may wait that long before failing open. Give it "
            "a short socket_timeout and at most %d retry, as MollifierBuffer.from_url does.",
            options.get("socket_timeout"),
            retries,
            MAX_CLIENT_RETRIES,
        )
