"""Mistakes in how the middleware is built or an actor declared fail loudly at startup, naming
what is wrong (found by a review of configuration mistakes: each was accepted, and then gated
nothing or failed on every send)."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
import redis
import redis.asyncio
from dramatiq.brokers.stub import StubBroker

from dramatiq_mollifier import (
    CrashRetries,
    MiddlewareConfigurationError,
    Mollifier,
    MollifierConfigurationError,
    MollifierSettings,
)

SETTINGS = MollifierSettings(enabled=True, enabled_orgs={"acme"})


@pytest.mark.parametrize("settings", [{"enabled": True}, MollifierSettings])
def test_settings_that_are_not_a_settings_instance_are_refused(settings: Any) -> None:
    with pytest.raises(MollifierConfigurationError, match="takes a MollifierSettings instance"):
        Mollifier(settings)


def test_a_tenant_resolver_that_is_not_callable_is_refused() -> None:
    # Mollifier(tenant="org_id") failed open on every send ('str' object is not callable)
    with pytest.raises(MollifierConfigurationError, match="tenant must be a callable"):
        Mollifier(SETTINGS, client=redis.Redis(port=1, socket_timeout=0.5), tenant="org_id")  # type: ignore[arg-type]


def test_an_asyncio_client_is_refused() -> None:
    # Its calls return coroutines: the layout check failed with an error naming the wrong setting
    client = redis.asyncio.Redis(port=1)
    with pytest.raises(MollifierConfigurationError, match="synchronous Redis client"):
        Mollifier(SETTINGS, client=client)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["false", 0, "off"])
def test_an_actor_option_that_is_not_a_bool_fails_the_declaration(value: Any) -> None:
    # Only False opted out: mollifier='false' diverted the actor as if nothing were said
    broker = StubBroker()
    broker.add_middleware(Mollifier(SETTINGS, client=redis.Redis(port=1, socket_timeout=0.5, retry=None)))

    with pytest.raises(
        MiddlewareConfigurationError, match=r"actor 'ingest': mollifier= must be True or False"
    ):

        @dramatiq.actor(broker=broker, mollifier=value)
        def ingest() -> None: ...

    assert "ingest" not in broker.actors
    broker.close()


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/crash", "redis+sentinel://h:26379", "localhost:6379"]
)
def test_crash_retries_from_url_checks_the_url_as_the_settings_do(url: str) -> None:
    # /crash silently meant db 0; the Sentinel URL without a service raised an IndexError
    with pytest.raises(MollifierConfigurationError, match=r"CrashRetries\.from_url"):
        CrashRetries.from_url(url)


def test_a_url_whose_timeouts_could_stall_sends_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    # The README passes the URL's query options through: an app's own REDIS_URL, copied with
    # ?socket_timeout=5, let each send wait 5 s on a stalled Redis, and nothing said so.
    for quick in ("", "?socket_timeout=0.2", "?socket_timeout=0.5&socket_connect_timeout=0.25"):
        Mollifier(MollifierSettings(redis_url=f"redis://127.0.0.1:1/0{quick}"))
    assert "slow_send_path" not in caplog.text

    Mollifier(MollifierSettings(redis_url="redis://127.0.0.1:1/0?socket_timeout=5&socket_connect_timeout=2"))

    assert "MOLLIFIER_REDIS_URL sets socket_timeout=5, socket_connect_timeout=2" in caplog.text


def test_crash_retries_placed_before_retries_fails_at_import_and_at_boot() -> None:
    # Retries' after hook ran first: the verdict's record stayed in memory for good, and a
    # sibling thread's crash in between let the next delivery run the actor past max_retries.
    def crash_retries() -> CrashRetries:
        return CrashRetries(client=redis.Redis(port=1, socket_timeout=0.5, retry=None), key_prefix="t")

    placed_before = "CrashRetries is placed before Retries on the broker: add it after"
    declared = StubBroker()
    dramatiq.actor(lambda: None, actor_name="ingest", broker=declared)
    with pytest.raises(MiddlewareConfigurationError, match=placed_before):
        declared.add_middleware(crash_retries(), before=dramatiq.middleware.Retries)

    undeclared = StubBroker()
    undeclared.add_middleware(crash_retries(), before=dramatiq.middleware.Retries)
    with pytest.raises(MiddlewareConfigurationError, match=placed_before):
        dramatiq.actor(lambda: None, actor_name="ingest", broker=undeclared)
    with pytest.raises(MiddlewareConfigurationError, match=placed_before):
        dramatiq.Worker(undeclared, worker_threads=1).start()

    appended = StubBroker()
    dramatiq.actor(lambda: None, actor_name="ingest", broker=appended)
    appended.add_middleware(crash_retries())  # where add_middleware puts it: accepted
    assert isinstance(appended.middleware[-1], CrashRetries)
    for broker in (declared, undeclared, appended):
        broker.close()
