"""A background loop that runs one callable every interval until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Heartbeat"]

logger = logging.getLogger(__name__)


class Heartbeat:
    """Calls ``run_once`` at once and then every ``interval_ms`` on a daemon thread.

    ``run_once`` should not raise; if it does, the error is logged and the loop carries on.
    ``stop`` wakes the loop from its sleep at once.
    """

    def __init__(self, run_once: Callable[[], object], *, interval_ms: int, name: str) -> None:
        self._run_once = run_once
        self._interval_s = interval_ms / 1000
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the loop (a no-op if it runs already)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_ms: int = 5_000) -> bool:
        """End the loop; True when it ended within ``timeout_ms`` (or never ran)."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is None:
            return True
        thread.join(timeout_ms / 1000)
        return not thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_once()
            except Exception:
                logger.exception("mollifier.crash_heartbeat_failed")
            self._stop.wait(self._interval_s)
