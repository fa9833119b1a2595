"""The drain pace: a fleet-wide budget of drained messages waiting in the broker.

Dramatiq queues are FIFO, so whatever the drainer puts on the broker, every message sent after
it waits behind. Draining as fast as possible rebuilds the burst inside the broker queue, and a
quiet tenant's message waits as long as if nothing had been buffered. The pace keeps the burst in
the buffer instead: at most a budget of drained messages may be in the broker and not yet
started by a worker, counted in Redis for every drainer of the fleet. A worker's
:class:`~dramatiq_mollifier.Mollifier` gives a slot back as soon as it starts a drained message,
so the drainer refills exactly as fast as the fleet consumes, and a quiet message waits behind
at most the budget's worth of the burst.

The budget adapts: it is :data:`MIN_OUTSTANDING` plus the fleet's consumption rate (drained
messages started per second, counted as their slots are freed) times ``target_wait_ms``, at most
``max_outstanding``. A fixed count would be either too small for a fast fleet (workers idle
while the drainers refill) or too large for a slow one (a quiet message waits behind seconds of
the burst); a count sized in time is right for both. The consumer side also wants the queue never
empty: a Dramatiq consumer that finds its queue empty backs off (exponentially, up to its
timeout) before it looks again.

Messages in the broker count against the budget; slots claimed for messages still on their way
(popped, in a drainer's handlers) are held apart until the drainer reports the batch written
(:meth:`DrainPace.landed`). A drainer counts its own on-the-way slots against the budget, not the
other drainers': counting every drainer's left the broker queue empty whenever the drainers'
handlers held most of a small budget (two drainers, two refills each), and counting none let one
drainer claim the budget twice over before its first writes landed. All on-the-way slots together
are bounded by a second budget's worth, so the broker holds at most the budget plus what the
other drainers are writing at that moment. A drainer that moves in Redis counts every drainer's:
its own slots are on their way for two round trips, and two such drainers claiming at once filled
the broker past the budget.

A drainer the budget stopped waits before it claims again: half the target wait, shorter while
the workers empty what each claim left within it (a burst's start, when the rate trails the
workers; ``drain/paced_wait.py``).

Each slot is a member of a sorted set, scored with a deadline: a message that never starts (it
was lost from the broker, its queue purged, its drainer died) frees its slot when the deadline
passes, so a leak heals by itself. An optional ``rate_per_s`` caps the fleet's drain rate as well,
for users who protect a database behind the actors rather than the broker.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import redis
from redis.commands.core import Script

from ..buffer.clients import slot_groups_for
from ..buffer.keys import KeySpace
from ..buffer.scripts import run
from ..settings import MollifierSettings, default_of
from ..telemetry import ThrottledLog
from .paced_wait import PacedWait

__all__ = [
    "DEFAULT_MAX_OUTSTANDING",
    "DEFAULT_OUTSTANDING_TTL_MS",
    "DEFAULT_TARGET_WAIT_MS",
    "MAX_PACED_WAIT_MS",
    "MIN_OUTSTANDING",
    "RATE_WINDOW_MS",
    "Claim",
    "DrainPace",
    "pace_for",
]

logger = logging.getLogger(__name__)

#: The budget's ceiling: drained messages the fleet may have waiting in the broker, whatever its
#: consumption rate.
DEFAULT_MAX_OUTSTANDING: int = default_of("drain_max_outstanding")
#: How long a quiet message should wait behind drained ones, in ms: the budget is the fleet's
#: consumption rate times this.
DEFAULT_TARGET_WAIT_MS: int = default_of("drain_target_wait_ms")
#: The budget's floor (or the ceiling, if lower), added to the rate-sized part: slots for the
#: messages consumers have prefetched, which a quiet message does not wait behind for long; all
#: of the budget while the consumption rate is unknown, at the start of a burst or after the
#: workers stalled.
MIN_OUTSTANDING = 20
#: The window over which the fleet's consumption rate is measured, in ms.
RATE_WINDOW_MS = 100
#: How long a drained message may sit in the broker unstarted before its slot is freed anyway.
DEFAULT_OUTSTANDING_TTL_MS: int = default_of("drain_outstanding_ttl_ms")
#: An adaptive budget holds about ``target_wait_ms`` of the fleet's work, so this share of the
#: target wait frees about this share of the budget: a paced drainer waits that long at most
#: before it claims again (``drain/paced_wait.py``). Half, not a quarter: each tick moves twice
#: the messages for its fixed cost (the drainer's thread spent a fifth less CPU on RabbitMQ),
#: while the broker still holds half the budget when the refill comes.
PACED_WAIT_SHARE = 2
#: The longest a paced drainer waits, whatever the target: a longer wait let the consumption
#: rate's window lapse between refills (free.lua forgets a rate after four quiet windows), and
#: the budget stayed at its floor (at a target of 1,000 ms: 40 drained messages a second for a
#: fleet that starts 1,000).
MAX_PACED_WAIT_MS = 2 * RATE_WINDOW_MS

#: After a failed release, releases are skipped for this long (the slots heal by their deadline),
#: so a sick Redis does not cost every drained message a socket timeout.
RELEASE_COOL_DOWN_MS = 1_000


def _script(client: redis.Redis, name: str) -> Script:
    source = resources.files(__package__).joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")
    return client.register_script(source)


class Claim(NamedTuple):
    """Slots granted by :meth:`DrainPace.claim`, held as placeholders until bound."""

    granted: int
    #: Drained messages in the broker, not yet started, before this claim.
    in_use: int
    prefix: str
    #: The budget the claim was held to (the adaptive one, or the ceiling).
    budget: int = 0
    #: Slots on their way to the broker (claimed, popped, not yet reported written).
    on_the_way: int = 0


class DrainPace:
    """The fleet-wide drain budget in Redis (and an optional rate cap).

    Parameters:
      client: The buffer's Redis client.
      key_prefix: The buffer's key prefix.
      slot_groups: The buffer's key layout (see ``buffer/keys.py``); with groups the budget's keys
        share one slot. Defaults to None: 16 for a ``RedisCluster`` client, else 0.
      max_outstanding: Drained messages waiting in the broker, fleet-wide, at most: the budget's
        ceiling. Defaults to :data:`DEFAULT_MAX_OUTSTANDING`.
      outstanding_ttl_ms: How long a slot lives without its message starting. Defaults to
        :data:`DEFAULT_OUTSTANDING_TTL_MS`.
      rate_per_s: Drained messages per second, fleet-wide, at most. Defaults to 0: no cap.
      target_wait_ms: The budget is :data:`MIN_OUTSTANDING` plus the fleet's consumption rate
        (drained messages started per second, counted by :meth:`release`) times this, at most
        ``max_outstanding``. Defaults to 0: the budget is ``max_outstanding``.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = default_of("key_prefix"),
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        outstanding_ttl_ms: int = DEFAULT_OUTSTANDING_TTL_MS,
        rate_per_s: int = 0,
        target_wait_ms: int = 0,
        slot_groups: int | None = None,
    ) -> None:
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be at least 1, got {max_outstanding!r}")
        if outstanding_ttl_ms < 1 or rate_per_s < 0 or target_wait_ms < 0:
            raise ValueError(
                "outstanding_ttl_ms must be positive, rate_per_s and target_wait_ms not negative"
            )
        self.client = client
        self.max_outstanding = max_outstanding
        self.outstanding_ttl_ms = outstanding_ttl_ms
        self.rate_per_s = rate_per_s
        self.target_wait_ms = target_wait_ms
        self.min_outstanding = min(MIN_OUTSTANDING, max_outstanding)
        keys = KeySpace(key_prefix, groups=slot_groups_for(slot_groups, client))
        self._outstanding = keys.outstanding
        # Same hash tag as the outstanding key, if it has one: the scripts touch both.
        self._on_the_way = f"{keys.outstanding}:on-the-way"
        self._rate = keys.drain_rate
        self._consumed = keys.drain_consumed
        self._claim = _script(client, "claim")
        self._bind = _script(client, "bind")
        self._free = _script(client, "free")
        self._landed = _script(client, "landed")
        self._in_use = _script(client, "in_use")
        self._refund = _script(client, "refund")
        self._token = f"~{uuid.uuid4().hex}:"
        self._claims = itertools.count(1)
        self._release_paused_until = 0.0
        self._warnings = ThrottledLog(logger, interval_ms=60_000)
        longest_ms = min(MAX_PACED_WAIT_MS, target_wait_ms // PACED_WAIT_SHARE) if target_wait_ms else 0
        adaptive = bool(target_wait_ms) and not rate_per_s
        self._paced_wait = PacedWait(longest_ms=longest_ms, adaptive=adaptive)

    @property
    def paced_wait_ms(self) -> int:
        """How long a drainer the budget stopped waits before it claims again, in ms: half of
        ``target_wait_ms`` (at most :data:`MAX_PACED_WAIT_MS`), shorter while the workers empty
        what each claim left within the wait (``drain/paced_wait.py``); 5 ms for a fixed budget."""
        return self._paced_wait.wait_ms

    def claim(self, wanted: int, *, own: int = 0, moves: bool = False) -> Claim:
        """Take up to ``wanted`` slots (fewer when the budget or the rate says so); ``own``: the
        caller's slots on their way to the broker, which it counts against the budget. ``moves``:
        the caller moves its messages inside Redis (``drain/redis_move.py``), so its slots land
        within two round trips and it counts every drainer's on their way (a handler-path
        drainer's too, in a fleet that mixes both); its placeholders live 1 s at most, so a
        claim never spent does not hold the fleet's budget for ``outstanding_ttl_ms``."""
        prefix = f"{self._token}{next(self._claims)}:"
        granted, in_use, budget, on_the_way, expired = self._run(
            self._claim,
            keys=(self._outstanding, self._rate, self._consumed, self._on_the_way),
            args=(
                wanted,
                self.max_outstanding,
                prefix,
                self.outstanding_ttl_ms,
                self.rate_per_s,
                self.target_wait_ms,
                self.min_outstanding,
                RATE_WINDOW_MS,
                own,
                int(moves),
            ),
        )
        if int(expired):
            self._warnings.throttled_warning(
                "expired",
                "mollifier.pace_slots_expired %d drained messages were not seen starting within "
                "drain_outstanding_ttl_ms (%d ms). Either they were lost from the broker (a purged "
                "queue), or the workers that run them free their slots in another budget (another "
                "buffer, key_prefix or slot_groups, as in a migration) or run no Mollifier (a "
                "deploy that removed it): this drainer then moves one budget per %d ms; keep the "
                "middleware in every worker (MOLLIFIER_ENABLED=false still frees slots), or drain "
                "such a buffer with MOLLIFIER_DRAIN_MAX_OUTSTANDING=0",
                int(expired),
                self.outstanding_ttl_ms,
                self.outstanding_ttl_ms,
            )
        self._paced_wait.claimed(level=int(in_use) + int(on_the_way), granted=int(granted))
        return Claim(int(granted), int(in_use), prefix, int(budget), int(on_the_way))

    def try_claim(self, wanted: int, *, own: int = 0, moves: bool = False) -> Claim | None:
        """:meth:`claim`, or None when Redis fails (logged): the drainer pops nothing this time."""
        try:
            return self.claim(wanted, own=own, moves=moves)
        except Exception:
            self._paced_wait.reset()
            logger.warning("mollifier.drain_error claiming drain budget", exc_info=True)
            return None

    @property
    def keys(self) -> tuple[str, str]:
        """The budget's two sorted sets: drained messages in the broker, slots on their way."""
        return self._outstanding, self._on_the_way

    def try_bind(self, claim: Claim, message_ids: Sequence[str]) -> None:
        """:meth:`bind`, logging a failure: the entries still go to the broker, and the budget
        undercounts until the claim's placeholders expire."""
        try:
            self.bind(claim, message_ids)
        except Exception:
            logger.warning("mollifier.drain_error binding drain budget", exc_info=True)

    def bind(self, claim: Claim, message_ids: Sequence[str]) -> None:
        """Turn a claim's slots into ``message_ids`` (before they reach the broker); frees the rest."""
        if claim.granted == 0 and not message_ids:
            return
        self._run(
            self._bind,
            keys=(self._on_the_way,),
            args=(claim.prefix, claim.granted, self.outstanding_ttl_ms, *message_ids),
        )
        self.refund(claim, used=len(message_ids))

    def refund(self, claim: Claim, *, used: int) -> None:
        """Report how many of the claim's slots carried a message (``used``). The rest were not
        consumed (the paced wait must not count them so), and under a rate cap their tokens go
        back: spent for nothing, they kept other orgs' claims empty. Never raises."""
        unused = claim.granted - used
        if unused > 0:
            self._paced_wait.unused(unused)
        if not self.rate_per_s or unused <= 0:
            return
        try:
            self._run(self._refund, keys=(self._rate,), args=(unused, self.rate_per_s))
        except Exception:  # the bucket refills by itself within a second
            logger.debug("mollifier.pace could not give back %d rate token(s)", unused, exc_info=True)

    def landed(self, written: Sequence[str], given_back: Sequence[str] = ()) -> None:
        """Report a batch of broker writes: ``written`` ids now count against the budget,
        ``given_back`` ones (never reached the broker) free their slots. Never raises, as
        :meth:`release`: unreported slots free themselves by their deadline.
        """
        if not written and not given_back:
            return
        try:
            self._run(
                self._landed,
                keys=(self._outstanding, self._on_the_way),
                args=(self.outstanding_ttl_ms, len(written), *written, *given_back),
            )
        except Exception as exc:  # not only RedisError: a socket closed under us raises OSError
            logger.warning(
                "mollifier.pace could not report %d drained message(s) written; their slots free "
                "themselves within %d ms. %s: %s",
                len(written) + len(given_back),
                self.outstanding_ttl_ms,
                type(exc).__name__,
                exc,
            )

    def release(self, message_ids: Sequence[str]) -> None:
        """Give back the slots of messages workers started, counting them in the consumption rate.

        Never raises: a slot that cannot be released now is freed by its deadline.
        """
        self._give_back(message_ids, started=True)

    def give_back(self, message_ids: Sequence[str]) -> None:
        """Give back the slots of messages that never reached the broker (not counted as started).

        Never raises, as :meth:`release`.
        """
        self._give_back(message_ids, started=False)

    def _give_back(self, message_ids: Sequence[str], *, started: bool) -> None:
        if not message_ids or time.monotonic() < self._release_paused_until:
            return
        try:
            if started:
                self._run(
                    self._free,
                    keys=(self._outstanding, self._consumed, self._on_the_way),
                    args=(RATE_WINDOW_MS, *message_ids),
                )
            else:
                self._run(
                    self._landed,
                    keys=(self._outstanding, self._on_the_way),
                    args=(self.outstanding_ttl_ms, 0, *message_ids),
                )
        except Exception as exc:  # not only RedisError: a socket closed under us raises OSError
            self._release_paused_until = time.monotonic() + RELEASE_COOL_DOWN_MS / 1000
            logger.warning(
                "mollifier.pace could not release %d drain slot(s); they free themselves within "
                "%d ms. %s: %s",
                len(message_ids),
                self.outstanding_ttl_ms,
                type(exc).__name__,
                exc,
            )

    def _run(self, script: Script, *, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        # The buffer's direct path (buffer/scripts.py): about 100 us of client CPU less a call
        # than Script.__call__, and a drainer makes one to three of these a tick.
        return run(self.client, script, len(keys), *keys, *args)

    def in_use(self) -> int:
        """Slots taken now, in the broker or on their way; expired ones are not counted, though
        only the next claim prunes them."""
        return int(self._run(self._in_use, keys=(self._outstanding, self._on_the_way), args=()))


def pace_for(settings: MollifierSettings, client: redis.Redis) -> DrainPace | None:
    """The pace these settings ask for, on ``client``; None when ``drain_max_outstanding`` is 0."""
    if settings.drain_max_outstanding == 0:
        return None
    return DrainPace(
        client,
        key_prefix=settings.key_prefix,
        max_outstanding=settings.drain_max_outstanding,
        outstanding_ttl_ms=settings.drain_outstanding_ttl_ms,
        rate_per_s=settings.drain_rate_limit_per_s,
        target_wait_ms=settings.drain_target_wait_ms,
        slot_groups=settings.buffer_options["slot_groups"],
    )
