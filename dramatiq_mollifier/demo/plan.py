"""The demo's traffic: one noisy tenant's burst alongside steady small tenants."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL_PLAN", "QUICK_PLAN", "DemoPlan", "Traffic"]


@dataclass(frozen=True)
class Traffic:
    """One tenant's sends: ``count`` messages spread evenly over ``duration_s`` from ``start_s``."""

    org_id: str
    env_id: str
    count: int
    start_s: float
    duration_s: float

    @property
    def label(self) -> str:
        return f"{self.org_id}/{self.env_id}"

    def offsets_s(self) -> list[float]:
        step = self.duration_s / self.count
        return [self.start_s + i * step for i in range(self.count)]


@dataclass(frozen=True)
class DemoPlan:
    """The traffic (the noisy tenant first) and the worker's shape."""

    traffic: tuple[Traffic, ...]
    #: Worker threads of the one ``dramatiq`` worker process.
    threads: int = 8
    #: Simulated work per message, in milliseconds.
    work_ms: float = 2.0
    #: How long to wait, after the last send, for everything to be processed, in seconds.
    drain_deadline_s: float = 45.0

    def describe(self) -> str:
        noisy, steady = self.traffic[0], self.traffic[1:]
        rates = sorted({round(t.count / t.duration_s) for t in steady})
        return (
            f"{noisy.label} bursts {noisy.count:,} messages at {noisy.count / noisy.duration_s:,.0f}/s "
            "(or as fast as this machine sends); "
            f"{len(steady)} small tenants send {'/'.join(map(str, rates))} per second "
            f"for {max(t.duration_s for t in steady):g} s"
        )


def _steady(count: int, duration_s: float, *tenants: tuple[str, str]) -> tuple[Traffic, ...]:
    return tuple(Traffic(org_id, env_id, count, 0.0, duration_s) for org_id, env_id in tenants)


FULL_PLAN = DemoPlan(
    (
        Traffic("acme", "prod", 5_000, 1.0, 1.0),
        *_steady(200, 4.0, ("globex", "prod"), ("initech", "prod"), ("umbrella", "prod")),
        Traffic("initech", "staging", 100, 0.0, 4.0),
    )
)
QUICK_PLAN = DemoPlan(
    (
        Traffic("acme", "prod", 1_000, 0.5, 0.5),
        *_steady(30, 1.5, ("globex", "prod"), ("initech", "prod"), ("umbrella", "prod")),
    ),
    drain_deadline_s=30.0,
)
