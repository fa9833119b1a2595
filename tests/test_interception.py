"""The skip-the-broker-write mechanism on its own, with a plain middleware on a StubBroker."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, MiddlewareError

from dramatiq_mollifier.gate import interception


class DivertEverything(Middleware):
    """Diverts every message it may divert; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.after: list[str] = []
        self.calls: list[interception.EnqueueCall | None] = []

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        self.seen.append(message.message_id)
        call = interception.current_call(broker, message)
        self.calls.append(call)
        if call is not None:
            interception.divert(message, "per_env_rate")

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        self.after.append(message.message_id)


def message(queue_name: str = "default") -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={})


def make_broker() -> tuple[StubBroker, DivertEverything]:
    broker = StubBroker()
    broker.declare_queue("default")
    middleware = DivertEverything()
    broker.add_middleware(middleware)
    return broker, middleware


def test_a_diverted_message_is_returned_without_a_broker_write_or_after_enqueue() -> None:
    broker, middleware = make_broker()
    interception.install(broker)
    sent = message()

    returned = broker.enqueue(sent)

    # A copy that says it was mollified; the caller's own message is left alone
    assert returned is not sent
    assert returned.asdict() == {
        **sent.asdict(),
        "options": {"mollified": True, "mollifier_reason": "per_env_rate"},
    }
    assert sent.options == {}
    assert broker.queues["default"].qsize() == 0
    assert middleware.after == []


def test_without_the_wrapper_the_diversion_cannot_happen() -> None:
    broker, middleware = make_broker()

    broker.enqueue(message())

    assert middleware.calls == [None]
    assert broker.queues["default"].qsize() == 1


def test_the_error_reaches_the_caller_if_raised_outside_a_wrapped_call() -> None:
    # Why the gate only diverts inside current_call: Dramatiq lets MiddlewareError through.
    broker = StubBroker()
    broker.declare_queue("default")

    class Raise(Middleware):
        def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
            interception.divert(message, "per_env_rate")

    broker.add_middleware(Raise())
    with pytest.raises(MiddlewareError):
        broker.enqueue(message())


def test_install_is_idempotent_and_per_instance() -> None:
    broker, _ = make_broker()
    other = StubBroker()

    interception.install(broker)
    wrapper = broker.enqueue
    interception.install(broker)

    assert broker.enqueue is wrapper
    assert interception.is_installed(broker)
    assert not interception.is_installed(other)
    assert "enqueue" not in vars(other)


def test_a_delayed_enqueue_goes_through_the_wrapper_with_its_delay() -> None:
    broker, middleware = make_broker()
    interception.install(broker)

    class Undivert(Middleware):
        def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
            assert delay == 500

    broker.middleware.insert(0, Undivert())
    returned = broker.enqueue(message(), delay=500)

    assert returned.queue_name == "default.DQ"
    assert middleware.calls[0] is not None


def test_a_message_proxy_is_accepted_as_retries_passes_one() -> None:
    broker, _middleware = make_broker()
    interception.install(broker)
    sent = message()

    returned = broker.enqueue(MessageProxy(sent))  # type: ignore[arg-type]

    assert returned.message_id == sent.message_id
    assert broker.queues["default"].qsize() == 0


def test_the_call_belongs_to_its_broker_and_message() -> None:
    broker, _ = make_broker()
    other_broker = StubBroker()
    interception.install(broker)
    seen: list[tuple[Any, Any, Any]] = []

    class Look(Middleware):
        def before_enqueue(self, b: dramatiq.Broker, m: dramatiq.Message[Any], delay: int) -> None:
            seen.append(
                (
                    interception.current_call(b, m),
                    interception.current_call(other_broker, m),
                    interception.current_call(b, message()),
                )
            )

    broker.middleware.insert(0, Look())
    broker.enqueue(message())

    mine, other, wrong_id = seen[0]
    assert mine is not None and mine.broker is broker
    assert (other, wrong_id) == (None, None)


def test_a_nested_enqueue_restores_the_outer_call() -> None:
    outer, _ = make_broker()
    inner = StubBroker()
    inner.declare_queue("default")
    interception.install(outer)
    interception.install(inner)
    outer_calls: list[Any] = []

    class EnqueueElsewhereFirst(Middleware):
        def before_enqueue(self, broker: dramatiq.Broker, m: dramatiq.Message[Any], delay: int) -> None:
            inner.enqueue(message())
            outer_calls.append(interception.current_call(broker, m))

    outer.middleware.insert(0, EnqueueElsewhereFirst())
    outer.enqueue(message())

    assert outer_calls[0] is not None
    assert inner.queues["default"].qsize() == 1  # inner has no diverting middleware


def test_calls_are_per_thread() -> None:
    broker, _ = make_broker()
    interception.install(broker)
    started, release = threading.Event(), threading.Event()
    from_other_thread: list[Any] = []
    from_own_thread: list[Any] = []

    class Hold(Middleware):
        def before_enqueue(self, b: dramatiq.Broker, m: dramatiq.Message[Any], delay: int) -> None:
            from_own_thread.append(interception.current_call(b, m))
            started.set()
            release.wait(5)

    broker.middleware.insert(0, Hold())
    held = message()
    thread = threading.Thread(target=broker.enqueue, args=(held,))
    thread.start()
    assert started.wait(5)
    from_other_thread.append(interception.current_call(broker, held))
    release.set()
    thread.join()

    assert from_other_thread == [None]
    assert len(from_own_thread) == 1 and from_own_thread[0] is not None
