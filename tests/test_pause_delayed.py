"""A paused tenant's delayed messages (retries, scheduled sends) are held when they come due.

A real RedisBroker and a real Dramatiq worker: the worker promotes a due message from the delay
queue through ``broker.enqueue``, where the gate sees it again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from dramatiq_mollifier.models import STATE_DRAINED, marker

from .controls_helpers import App
from .mollifier_helpers import eventually


@pytest.fixture
def app(broker_url: str) -> Iterator[App]:
    app = App(broker_url)
    yield app
    app.close()


def test_a_paused_tenants_delayed_sends_are_held_when_due_and_run_after_the_resume(
    app: App, redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    # Given a worker with the Mollifier draining, and org acme paused
    mollifier = app.add_draining_mollifier(redis_url, key_prefix, redis_client)
    controls = mollifier.controls
    assert controls.pause("acme")
    mollifier.rules.refresh()
    app.start_worker()

    # When acme and globex each send a message with a delay (as a retry or scheduled work does)
    held = app.actor.send_with_options(args=(0,), org_id="acme", env_id="prod", delay=200)
    other = app.actor.send_with_options(args=(0,), org_id="globex", env_id="prod", delay=200)
    # and Retries re-enqueues a message of acme's that a drainer had delivered (its marker kept)
    retried = app.message("acme")
    retried.options.update(marker(STATE_DRAINED, retried.message_id))
    app.broker.enqueue(retried, delay=200)
    assert mollifier.buffer.depth() == 0  # a delayed send keeps its delay: it is not buffered

    # Then, once due, globex's runs and acme's two are held in the buffer (paused), not run
    eventually(lambda: len(app.processed) >= 1, 10, "globex's delayed message to run")
    both = (held.message_id, retried.message_id)
    eventually(lambda: {controls.lookup(mid).state for mid in both} == {"queued"}, 10, "acme's to be held")
    assert [mid for _, mid in app.processed] == [other.message_id]

    # And after the resume they run, once each
    assert controls.resume("acme")
    eventually(lambda: len(app.processed) >= 3, 10, "acme's messages to run after the resume")
    eventually(lambda: mollifier.buffer.depth() == 0, what="the buffer to empty")
    expected = sorted([held.message_id, retried.message_id, other.message_id])
    assert sorted(mid for _, mid in app.processed) == expected
