"""A process that takes one message with CrashRetries on a StubBroker and segfaults in it.

``python -m tests.apps.crash_stub_child <redis url> <key prefix> <evidence dir> <message id>``
"""

from __future__ import annotations

import ctypes
import sys
import time

import dramatiq
from dramatiq import Message, Worker
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier.crash import CrashRetries


def main(redis_url: str, key_prefix: str, evidence_dir: str, message_id: str) -> None:
    broker = StubBroker()
    broker.add_middleware(CrashRetries.from_url(redis_url, key_prefix=key_prefix, evidence_dir=evidence_dir))

    @dramatiq.actor(broker=broker, actor_name="boom", max_retries=0)
    def boom() -> None:
        ctypes.string_at(0)

    broker.enqueue(
        Message(
            queue_name="default", actor_name="boom", args=(), kwargs={}, options={}, message_id=message_id
        )
    )
    Worker(broker, worker_threads=1).start()
    time.sleep(30)  # the worker thread segfaults the process long before this ends


if __name__ == "__main__":
    main(*sys.argv[1:5])
