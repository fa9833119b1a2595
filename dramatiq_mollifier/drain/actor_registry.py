"""Which actors the fleet's drainers can deliver, so that a drainer that cannot deliver an entry
gives it back for one that can, instead of dead-lettering it.

Worker fleets split by module (``dramatiq app.billing`` on some hosts, ``dramatiq app.search``
on others) share the one buffer their producers divert every actor's messages into, so a drainer
meets entries for actors its process does not declare. Each drainer announces its broker's
actors in a Redis hash (``{p}:drain:actors``: actor -> when last announced, ms) every
:data:`ANNOUNCE_EVERY_S`; an entry for an actor some drainer announced within
:data:`ANNOUNCED_WITHIN_MS` goes back untried, no attempt counted. Only an actor that no live
drainer declares goes through the rolling-deploy grace (``drain_unknown_actor_grace_ms``) and
is then dead-lettered: before this, a drainer that had met an actor for longer than the grace
dead-lettered every new entry of it that it popped, though its sibling fleet would deliver it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ANNOUNCED_WITHIN_MS", "ANNOUNCE_EVERY_S", "ActorRegistry"]

logger = logging.getLogger(__name__)

#: How often a drainer announces its actors (its housekeeping runs about once a second).
ANNOUNCE_EVERY_S = 5.0
#: An actor announced this recently has a live drainer (clocks of other hosts included).
ANNOUNCED_WITHIN_MS = 30_000
#: How long the announcements live without a drainer (the hash's expiry).
_KEEP_MS = 600_000
#: How long a drainer trusts what it read of one actor.
_CACHE_S = 1.0


class ActorRegistry:
    """The fleet's announced actors in ``key`` on ``client``; ``actors`` gives this drainer's."""

    def __init__(
        self,
        client: Any,
        key: str,
        actors: Callable[[], Iterable[str]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._key = key
        self._actors = actors
        self._clock = clock
        self._announced_at = float("-inf")
        self._seen: dict[str, tuple[float, bool]] = {}

    def announce(self) -> None:
        """Record this drainer's actors as delivered now (at most every ``ANNOUNCE_EVERY_S``).
        Never raises: an announcement missed is made at the next."""
        now = self._clock()
        if now - self._announced_at < ANNOUNCE_EVERY_S:
            return
        actors = sorted(set(self._actors()))
        if not actors:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(self._key, mapping=dict.fromkeys(actors, int(now * 1000)))
            pipe.pexpire(self._key, _KEEP_MS)
            pipe.execute()
        except Exception:
            logger.debug("mollifier.drainer could not announce its actors", exc_info=True)
            return
        self._announced_at = now

    def declares(self, actor_name: str) -> bool:
        """Whether a live drainer of another process announced ``actor_name`` (False when
        unknown, and for an actor this process declares: its entry's queue is what is
        missing here, and every drainer running this code would give it back for good)."""
        if actor_name in set(self._actors()):
            return False
        now = self._clock()
        cached = self._seen.get(actor_name)
        if cached is not None and now - cached[0] < _CACHE_S:
            return cached[1]
        try:
            raw = self._client.hget(self._key, actor_name)
            live = raw is not None and now * 1000 - float(raw) < ANNOUNCED_WITHIN_MS
        except Exception:  # Redis unwell: the grace decides, as before
            logger.debug("mollifier.drainer could not read the fleet's actors", exc_info=True)
            return False
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[actor_name] = (now, live)
        return live
