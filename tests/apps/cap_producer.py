"""A producer process for the cross-process cap tests: sends ``CAP_COUNT`` messages for
acme/prod through the Mollifier and prints how many sends raised ``BufferCapExceededError``.

Configured from the environment: ``CAP_BROKER_URL`` (the RedisBroker's), ``CAP_COUNT``,
``CAP_START_KEY`` (a key of the Mollifier's Redis to wait for, so that both processes send at the
same time) and ``MOLLIFIER_*``.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dramatiq_mollifier import BufferCapExceededError, Mollifier
from dramatiq_mollifier.buffer.clients import client_from_url

BROKER_URL = os.environ["CAP_BROKER_URL"]


def main() -> None:
    broker = RedisBroker(url=BROKER_URL)
    broker.add_middleware(Mollifier())
    actor = dramatiq.actor(lambda n: None, actor_name="ingest", broker=broker)
    client = client_from_url(os.environ["MOLLIFIER_REDIS_URL"])
    deadline = time.monotonic() + 20
    while not client.exists(os.environ["CAP_START_KEY"]):
        if time.monotonic() > deadline:
            raise SystemExit("never told to start")
        time.sleep(0.005)
    rejected = 0
    for n in range(int(os.environ["CAP_COUNT"])):
        try:
            actor.send_with_options(args=(n,), org_id="acme", env_id="prod")
        except BufferCapExceededError:
            rejected += 1
    print(f"rejected={rejected}", flush=True)
    broker.close()


if __name__ == "__main__":
    main()
