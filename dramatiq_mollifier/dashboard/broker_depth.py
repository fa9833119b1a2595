"""How many messages wait in the broker's queues, for the overview and its chart.

Dramatiq has no broker-neutral "queue length" call, so each broker is read its own way:
Redis (``LLEN <namespace>:<queue>``: messages waiting, not those a worker holds) and RabbitMQ
(a passive declare's message count). Delay queues (``.DQ``) and dead-letter queues (``.XQ``)
are not counted: they are not what the drainer's budget competes with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import dramatiq
import redis

__all__ = ["broker_depth_reader", "redis_queue_depth"]

_SIDE_QUEUES = (".DQ", ".XQ")


def _main_queues(names: Iterable[str]) -> list[str]:
    return sorted(name for name in names if not name.endswith(_SIDE_QUEUES))


def redis_queue_depth(client: redis.Redis, namespace: str, queues: Iterable[str]) -> Callable[[], int]:
    """Reads the waiting messages of Dramatiq Redis-broker ``queues`` under ``namespace``."""
    names = [f"{namespace}:{queue}" for queue in _main_queues(queues)]

    def depth() -> int:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        return sum(int(count) for count in pipe.execute())

    return depth


def broker_depth_reader(
    broker: dramatiq.Broker, queues: Iterable[str] | None = None
) -> Callable[[], int] | None:
    """A reader of ``broker``'s waiting messages over ``queues`` (default: its declared queues),
    or None for a broker this module cannot read (the chart then shows the buffer alone)."""
    from dramatiq.brokers.redis import RedisBroker

    if isinstance(broker, RedisBroker):
        names = list(queues) if queues is not None else None

        def redis_depth() -> int:
            chosen = names if names is not None else broker.get_declared_queues()
            return redis_queue_depth(broker.client, broker.namespace, chosen)()

        return redis_depth
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError:  # pika is not installed
        return None
    if isinstance(broker, RabbitmqBroker):
        rabbit = broker

        def rabbit_depth() -> int:
            chosen = list(queues) if queues is not None else rabbit.get_declared_queues()
            return sum(rabbit.get_queue_message_counts(name)[0] for name in _main_queues(chosen))

        return rabbit_depth
    return None
