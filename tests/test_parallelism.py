"""AdaptiveParallelism: the policy alone, on clocks the test drives."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from dramatiq_mollifier.drain.handler_pool import HandlerPool
from dramatiq_mollifier.drain.parallelism import AdaptiveParallelism
from dramatiq_mollifier.models import BufferEntry, EntryStatus


class Clocks:
    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def spend(self, wall_s: float, cpu_share: float) -> None:
        self.wall += wall_s
        self.cpu += wall_s * cpu_share


def policy(limit: int = 50) -> tuple[AdaptiveParallelism, Clocks]:
    clocks = Clocks()
    return AdaptiveParallelism(
        limit, window_ms=100, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu
    ), clocks


def test_starts_at_one_and_doubles_while_handlers_leave_the_cpu_idle() -> None:
    parallelism, clocks = policy(limit=50)
    assert parallelism.update() == 1
    values = []
    for _ in range(7):
        clocks.spend(0.125, cpu_share=0.1)
        values.append(parallelism.update())
    assert values == [2, 4, 8, 16, 32, 50, 50]


def test_halves_while_the_interpreter_is_saturated_and_never_drops_below_one() -> None:
    parallelism, clocks = policy()
    parallelism.value = 16
    values = []
    for _ in range(6):
        clocks.spend(0.125, cpu_share=1.0)
        values.append(parallelism.update())
    assert values == [8, 4, 2, 1, 1, 1]


def test_holds_between_the_thresholds() -> None:
    parallelism, clocks = policy()
    parallelism.value = 4
    for _ in range(5):
        clocks.spend(0.125, cpu_share=0.7)
        assert parallelism.update() == 4


def test_waits_for_a_whole_window_before_it_adjusts() -> None:
    parallelism, clocks = policy()
    clocks.spend(0.0625, cpu_share=0.0)
    assert parallelism.update() == 1
    clocks.spend(0.0625, cpu_share=0.0)
    assert parallelism.update() == 2


def test_restart_leaves_an_idle_spell_out_of_the_measure() -> None:
    parallelism, clocks = policy()
    parallelism.value = 4
    clocks.spend(10.0, cpu_share=0.0)  # asleep between ticks: not the handlers' doing
    parallelism.restart()
    clocks.spend(0.125, cpu_share=1.0)
    assert parallelism.update() == 2


def entries(n: int) -> list[BufferEntry]:
    now = datetime.now(timezone.utc)
    return [BufferEntry(f"m{i}", "o", "e", b"", EntryStatus.DRAINING, 0, now) for i in range(n)]


def test_actors_burning_cpu_beside_the_drainer_do_not_throttle_it() -> None:
    # Given a thread that keeps the interpreter busy, as actors of the same worker process do
    stop = threading.Event()

    def actor() -> None:
        while not stop.is_set():
            pass

    burner = threading.Thread(target=actor, daemon=True)
    burner.start()
    pool = HandlerPool(8, lambda entry: time.sleep(0.002), lambda completion: None)  # work that waits
    try:
        # When handlers that only wait (on a broker, say) run batch after batch
        deadline = time.monotonic() + 10
        while pool.parallelism.value < 8 and time.monotonic() < deadline:
            pool.submit(entries(8))
            pool.take(8)
            pool.in_flight -= 8
    finally:
        stop.set()
        burner.join()
        pool.close()

    # Then the drainer sees handlers that wait and runs them side by side
    assert pool.parallelism.value == 8
    assert pool.handler_cpu_s() < 1.0
