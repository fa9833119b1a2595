"""Fail-open on real servers: a mollifier Redis that stops, stalls or answers errors never breaks send()."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from redis.sentinel import MasterNotFoundError

from dramatiq_mollifier.buffer import health
from dramatiq_mollifier.buffer.health import misconfiguration
from dramatiq_mollifier.embedded import EmbeddedRedis

from .mollifier_helpers import add_mollifier, decisions, eventually, fail_opens

# One send must never wait longer than this on the mollifier (socket timeouts plus one retry).
SEND_BOUND_S = 2.5


@pytest.fixture
def broker(broker_url: str, key_prefix: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=broker_url, namespace=f"dq-{key_prefix}")
    yield broker
    broker.flush_all()
    broker.close()


def queue_size(broker: RedisBroker, queue_name: str) -> int:
    return int(broker.client.hlen(f"{broker.namespace}:{queue_name}.msgs"))


def timed_send(actor: dramatiq.Actor[Any, Any], **options: Any) -> float:
    started = time.monotonic()
    message = actor.send_with_options(**options)
    assert isinstance(message, dramatiq.Message)
    return time.monotonic() - started


def test_sends_keep_succeeding_through_the_broker_while_the_mollifier_redis_is_down(
    broker: RedisBroker, disposable_redis: EmbeddedRedis, key_prefix: str
) -> None:
    # Given a tripped, enrolled env whose messages are being diverted
    mollifier, reader = add_mollifier(
        broker,
        None,
        key_prefix,
        redis_url=disposable_redis.url,
        trip_threshold=0,
        trip_hold_ms=60_000,
        flag_refresh_ms=100,
        breaker_cooldown_ms=200,
    )

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def ingest() -> None: ...

    for _ in range(3):
        ingest.send_with_options(org_id="acme")
    assert queue_size(broker, ingest.queue_name) == 0
    assert mollifier.buffer.depth() == 3

    # When the mollifier's Redis stops mid-test
    disposable_redis.stop()
    started = time.monotonic()
    durations = [timed_send(ingest, org_id="acme") for _ in range(10)]
    durations += [timed_send(ingest, org_id="globex") for _ in range(5)]  # enrolment needs the flags

    # Then every send reached the broker, quickly, and each fail-open was counted
    assert max(durations) < SEND_BOUND_S
    assert time.monotonic() - started < 10 * SEND_BOUND_S
    assert queue_size(broker, ingest.queue_name) == 15
    counted = decisions(reader)
    # three failed calls open the breaker; it refuses the next calls at once
    failed = counted[("pass_through", "fail_open_trip", True)]
    assert 1 <= failed <= 3
    assert failed + counted[("pass_through", "fail_open_breaker", True)] == 10
    assert counted[("pass_through", "not_enrolled", False)] == 5
    stages = fail_opens(reader)
    assert stages[("trip",)] == failed
    assert stages[("breaker",)] == 10 - failed
    assert mollifier.breaker.is_open

    # And when the server is back, the breaker's probe finds it and diverting resumes
    disposable_redis.start()

    def diverted() -> bool:
        before = queue_size(broker, ingest.queue_name)
        ingest.send_with_options(org_id="acme")
        return queue_size(broker, ingest.queue_name) == before

    eventually(diverted, what="a send diverted again")
    assert not mollifier.breaker.is_open
    assert mollifier.buffer.depth() == 1


def test_a_shared_broker_and_buffer_redis_that_goes_down_fails_sends_in_dramatiqs_enqueue_alone(
    disposable_redis: EmbeddedRedis, key_prefix: str
) -> None:
    # Given one Redis for the broker and the buffer, and an env being diverted
    broker = RedisBroker(url=disposable_redis.url, namespace=f"dq-{key_prefix}")
    mollifier, reader = add_mollifier(
        broker, None, key_prefix, redis_url=disposable_redis.url, trip_threshold=0, trip_hold_ms=60_000
    )

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def ingest() -> None: ...

    ingest.send_with_options(org_id="acme")
    assert mollifier.buffer.depth() == 1

    # When that Redis goes down (a deploy review saw a producer die of it)
    disposable_redis.stop()
    errors = []
    for _ in range(5):
        with pytest.raises(redis.ConnectionError) as raised:
            ingest.send_with_options(org_id="acme")
        errors.append(raised)

    # Then each send failed open in the mollifier and raised from Dramatiq's own enqueue, as
    # it would without the mollifier: the broker is down
    for error in errors:
        frames = [str(frame.path) for frame in error.traceback if "/redis/" not in str(frame.path)]
        assert frames[-1].endswith("dramatiq/brokers/redis.py"), frames
    counted = decisions(reader)
    assert counted[("pass_through", "fail_open_trip", True)] >= 1
    assert sum(count for (_, reason, _), count in counted.items() if reason.startswith("fail_open")) == 5
    broker.close()


def stalled(url: str) -> bool:
    """Whether the server at ``url`` fails to answer a PING within 50 ms."""
    probe = redis.Redis.from_url(url, socket_timeout=0.05, socket_connect_timeout=0.05, retry=None)
    try:
        probe.ping()
        return False
    except redis.TimeoutError:
        return True
    finally:
        probe.close()


def test_a_mollifier_redis_that_was_never_up_does_not_break_sends(
    broker: RedisBroker, key_prefix: str, disposable_redis: EmbeddedRedis
) -> None:
    disposable_redis.stop()
    _, reader = add_mollifier(
        broker,
        None,
        key_prefix,
        redis_url=disposable_redis.url,
        trip_threshold=0,
        trip_hold_ms=60_000,
        flag_refresh_ms=100,
    )

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def ingest() -> None: ...

    assert timed_send(ingest, org_id="acme") < SEND_BOUND_S
    assert queue_size(broker, ingest.queue_name) == 1
    # The key layout could never be checked: nothing may be written to the buffer before it is.
    assert fail_opens(reader) == {("layout",): 1}


def test_a_stalled_mollifier_redis_costs_a_bounded_wait_then_the_broker_gets_the_message(
    broker: RedisBroker, disposable_redis: EmbeddedRedis, key_prefix: str
) -> None:
    _, reader = add_mollifier(
        broker,
        None,
        key_prefix,
        redis_url=disposable_redis.url,
        trip_threshold=0,
        trip_hold_ms=60_000,
        flag_refresh_ms=100,
    )

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def ingest() -> None: ...

    ingest.send_with_options(org_id="acme")  # connect and trip while the server answers
    # This client waits out the stall itself: its own timeout must outlast the script.
    stalling = redis.Redis.from_url(disposable_redis.url, socket_timeout=30, retry=None)

    def spin() -> None:
        # A script that spins for 3 s stalls the server (as a long command or a fork would).
        stalling.eval(
            "local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end "
            "local deadline = now() + 3000000 "
            "while now() < deadline do end return 1",
            0,
        )
        stalling.close()

    stall = threading.Thread(target=spin)
    stall.start()
    eventually(lambda: stalled(disposable_redis.url), 5, "the server to stall")
    try:
        took = timed_send(ingest, org_id="acme")
    finally:
        stall.join()

    print(f"stalled send took {took:.3f} s")
    assert took < SEND_BOUND_S
    assert queue_size(broker, ingest.queue_name) == 1
    assert fail_opens(reader)[("trip",)] == 1


def test_an_error_reply_from_redis_fails_open(
    broker: RedisBroker, redis_url: str, redis_client: redis.Redis, key_prefix: str
) -> None:
    mollifier, reader = add_mollifier(
        broker,
        None,
        key_prefix,
        redis_url=redis_url,
        trip_threshold=0,
        trip_hold_ms=60_000,
        flag_refresh_ms=100,
    )

    @dramatiq.actor(broker=broker, queue_name=f"q-{key_prefix}")
    def ingest() -> None: ...

    # The trip counter holds something INCR cannot count: the script errors.
    redis_client.set(mollifier.buffer.keys.tenant("acme", "default").trip_counter, "not a number")

    ingest.send_with_options(org_id="acme")

    assert queue_size(broker, ingest.queue_name) == 1
    assert decisions(reader) == {("pass_through", "fail_open_trip", True): 1}


@pytest.mark.parametrize("path", ["/70", "/0?client_name=billing%20worker"])
def test_a_redis_that_refuses_the_mollifier_is_reported_at_startup_naming_the_setting(
    disposable_redis: EmbeddedRedis, key_prefix: str, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    # A database the server does not have, a client name Redis refuses: the mollifier turned
    # itself off with nothing in the log until the first burst's throttled fail-open warnings
    url = disposable_redis.url.rsplit("/", 1)[0] + path
    broker = StubBroker()
    with caplog.at_level(logging.ERROR, logger="dramatiq_mollifier.buffer.health"):
        add_mollifier(broker, None, key_prefix, redis_url=url)
        eventually(lambda: "refuses the mollifier" in caplog.text, 5, "the startup report")
    # Other tests' startup checks may still be retrying in this process: look for this one's
    reports = [r.getMessage() for r in caplog.records if "mollifier.redis_unusable" in r.getMessage()]
    assert any("MOLLIFIER_REDIS_URL" in m and "refuses the mollifier" in m for m in reports), reports
    broker.close()


def test_a_redis_that_never_answers_is_reported_at_startup(
    refused_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A forgotten MOLLIFIER_REDIS_URL (the default, with nothing listening) looks like an outage
    # at every try: it is named once the startup check has waited its while (10 s; 0.5 s here)
    monkeypatch.setattr(health, "UNREACHABLE_REPORT_S", 0.5)
    broker = StubBroker()
    with caplog.at_level(logging.ERROR, logger="dramatiq_mollifier.buffer.health"):
        add_mollifier(broker, None, key_prefix, redis_url=refused_url)
        eventually(lambda: "has not answered since startup" in caplog.text, 10, "the startup report")
    assert "mollifier.redis_unusable the buffer's Redis (MOLLIFIER_REDIS_URL) has not answered" in caplog.text
    broker.close()


@pytest.mark.parametrize(
    ("error", "misconfigured"),
    [
        (redis.ConnectionError("Error 111 connecting. Connection refused."), False),
        (redis.TimeoutError("Timeout reading from socket"), False),
        (redis.exceptions.BusyLoadingError("loading"), False),
        (redis.AuthenticationError("invalid username-password pair"), True),
        (redis.ResponseError("DB index is out of range"), True),
        (redis.exceptions.NoPermissionError("NOPERM evalsha"), True),
        (MasterNotFoundError("No master found for 'my-master'"), True),
        # A cluster forming or failing over; redis-py 5.0 leaves these plain replies.
        (redis.ResponseError("CLUSTERDOWN The cluster is down"), False),
        (redis.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"), False),
        (
            redis.ResponseError(
                "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."
            ),
            False,
        ),
    ],
)
def test_what_counts_as_a_misconfiguration_rather_than_an_outage(
    error: Exception, misconfigured: bool
) -> None:
    assert misconfiguration(error) is misconfigured
