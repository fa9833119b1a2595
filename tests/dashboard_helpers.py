"""Filling a buffer with many tenants fast, and serving the dashboard over it on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.scripts import run_pipelined
from dramatiq_mollifier.dashboard import create_app
from dramatiq_mollifier.dashboard.serve import BackgroundServer
from dramatiq_mollifier.settings import MollifierSettings

#: The token the served dashboards of the tests ask for.
TOKEN = "test-token-0123456789abcdef"
_BATCH = 2_000


def fill(buffer: MollifierBuffer, counts: Iterable[tuple[str, str, int]]) -> list[str]:
    """Accept ``n`` entries for each ``(org, env, n)`` through the accept script, pipelined in
    batches (the path a diverted send takes); the message ids, in order."""
    calls = []
    ids = []
    for org, env, n in counts:
        t = buffer.keys.tenant(org, env)
        for _ in range(n):
            message_id = uuid.uuid4().hex
            ids.append(message_id)
            keys = [t.space.entry(message_id), *(k.decode() for k in t.accept_keys)]
            calls.append((keys, [message_id, org, env, b"payload", buffer.ttl_ms, b"divert"]))
    for start in range(0, len(calls), _BATCH):
        replies = run_pipelined(buffer.client, buffer.scripts.accept, calls[start : start + _BATCH])
        assert all(reply == 1 for reply in replies), replies
    return ids


@contextmanager
def served(
    client: redis.Redis, redis_url: str, key_prefix: str, **options: Any
) -> Iterator[BackgroundServer]:
    """The dashboard over this test's buffer, served by waitress on a free loopback port."""
    settings = MollifierSettings(redis_url=redis_url, key_prefix=key_prefix)
    options.setdefault("token", TOKEN)
    app = create_app(settings=settings, client=client, sample_interval_ms=200, **options)
    server = BackgroundServer(app)
    try:
        yield server
    finally:
        server.stop()
