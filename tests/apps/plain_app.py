"""A Dramatiq app without the Mollifier: ``dramatiq-mollifier drain`` must refuse it."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker

broker = StubBroker()
dramatiq.set_broker(broker)
