"""A multi-tenant event-ingestion service's Dramatiq app, with the mollifier.

Customers (orgs) send events from their environments (envs); every event becomes one
``ingest_event`` message, tagged with its tenant. When one env's enqueue rate trips the threshold,
its messages wait in the mollifier's Redis buffer and a drainer inside these same workers feeds
them back to the broker, fairly, while every other tenant's messages go straight through.

Run a worker (from the repository root)::

    REDIS_URL=redis://localhost:6379/0 dramatiq examples.app

``REDIS_URL`` (default ``redis://localhost:6379/0``) holds the broker's queues, the buffer and a
hash standing in for the service's database. ``BUFFER_REDIS_URL`` (default: ``REDIS_URL``) puts
the buffer elsewhere, e.g. on a Redis Cluster (``redis+cluster://host:port``), since Dramatiq's
RedisBroker needs a single server.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier import Mollifier, MollifierSettings

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
BUFFER_REDIS_URL = os.environ.get("BUFFER_REDIS_URL", REDIS_URL)

#: The hash standing in for the service's database: event id to how many times it was stored.
EVENTS_KEY = "example:events"
#: Receipts sent, per org.
RECEIPTS_KEY = "example:receipts"

broker = RedisBroker(url=REDIS_URL)  # type: ignore[no-untyped-call]
broker.add_middleware(
    Mollifier(
        MollifierSettings(
            enabled=True,
            enabled_orgs={"*"},  # or a few orgs first; `dramatiq-mollifier orgs enable` adds more live
            redis_url=BUFFER_REDIS_URL,
            trip_threshold=100,  # more than 100 enqueues per 200 ms (500/s) in one env trips it
        )
    )
)
dramatiq.set_broker(broker)

database = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(queue_name="events", max_retries=3)
def ingest_event(event: dict[str, Any]) -> None:
    """Store one event (here: count it, so a test can check each was stored exactly once)."""
    database.hincrby(EVENTS_KEY, event["id"], 1)


@dramatiq.actor(queue_name="billing", mollifier=False)
def send_receipt(org_id: str, events: int) -> None:
    """Billing is never held back, however busy its tenant: ``mollifier=False`` opts it out."""
    database.hincrby(RECEIPTS_KEY, org_id, events)


def track(org_id: str, env_id: str, event: dict[str, Any]) -> dramatiq.Message[Any]:
    """What the web handlers call: one event of one tenant onto the queue (or the buffer)."""
    return ingest_event.send_with_options(args=(event,), org_id=org_id, env_id=env_id)
