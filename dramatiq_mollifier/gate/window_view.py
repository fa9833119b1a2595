"""One trip window as one producer process sees it (``trip_evaluator=local``).

A process knows the fleet's count of an env's window only as of its last fold, plus its own sends
since. Two things narrow what the other processes can send past the threshold meanwhile:

- **their pace**: each fold's reply says how much the others added since this process's last
  fold, so the process extrapolates their sends to now, and folds at once (in the send) when that
  prediction goes over the threshold. A wrong prediction costs one fold, whose reply corrects the
  pace (an idle fleet predicts nothing);
- **the headroom**: this process wakes its fold thread when its own unfolded sends reach a
  quarter of what its last fold left below the threshold (of the whole threshold, before its
  first fold), instead of waiting out the fold interval. Producers that start a burst
  together each saw the others' sends only at their first fold, after half the threshold of their
  own (when their estimate woke the fold thread): two let 150 through a threshold of 100, four
  about 240. A quarter: the first folds come after a quarter of the threshold from each. It adds
  folds only for an env that this process sends a quarter of its headroom within one fold
  interval: one near its threshold, or one a burst is taking over it.
"""

from __future__ import annotations

from ..models import TripWindow

__all__ = ["HEADROOM_SHARE", "WindowView"]

_NEVER = float("inf")
#: The share of the headroom a process's own unfolded sends may take before it folds.
HEADROOM_SHARE = 4


class WindowView:
    """One window: the fleet's count at the last fold, this process's own sends, the others' pace."""

    __slots__ = (
        "at",
        "diverting",
        "end",
        "fleet",
        "hold_end",
        "hurry_at",
        "in_flight",
        "others_per_s",
        "pending",
    )

    def __init__(self, threshold: int) -> None:
        self.pending = 0  # counted here, not folded yet
        self.in_flight = 0  # in a fold whose reply has not come back
        self.fleet = 0  # the window's count in Redis at the last fold
        self.end = float("-inf")  # when that window ends (clock)
        self.hold_end = float("-inf")  # when its hold marker expires (clock)
        self.diverting = False  # seen tripped or backlogged: the fused script decides
        self.at = 0.0  # when the last fold's reply came (clock)
        self.others_per_s = 0.0  # the other processes' sends per second, between the last folds
        # Pending sends that wake the fold thread: a share of the headroom the last fold left.
        self.hurry_at: float = max(1, threshold // HEADROOM_SHARE)

    def estimate(self, now: float) -> int:
        """A lower bound of the fleet's count in the current window (this process's sends in)."""
        return (self.fleet if now < self.end else 0) + self.pending + self.in_flight

    def learn(
        self, window: TripWindow, now: float, threshold: int, *, folded: int, window_s: float, min_s: float
    ) -> None:
        """Take a fold's reply: ``folded`` of this process's sends were in it. ``window_s`` is the
        window's length; ``min_s`` the shortest span a pace is measured over (the fold
        interval: the others' counts arrive a fold at a time)."""
        end = now + max(window.window_ttl_ms, 0) / 1000
        # Counts only grow within a window: a smaller one is a new window. (A new window already
        # past the old count passes for the same one, and the others' pace is taken low.)
        if now < self.end and window.count >= self.fleet + folded:
            others, since = window.count - self.fleet - folded, self.at  # the same window
        else:
            others, since = window.count - folded, end - window_s  # a new one: since it began
        span, others = now - since, max(others, 0)
        # A span shorter than min_s says little alone (an early fold, or one in a send, may see
        # none of the others' folds): the last pace fills the rest of min_s.
        if span >= min_s:
            self.others_per_s = others / span
        else:
            self.others_per_s = (others + self.others_per_s * (min_s - max(span, 0))) / min_s
        self.fleet = window.count
        self.end = end
        self.at = now
        self.hold_end = now + window.hold_ttl_ms / 1000 if window.hold_ttl_ms > 0 else float("-inf")
        if window.hold_ttl_ms > 0 or window.backlog > 0 or window.count > threshold:
            self.diverting = True
        self.arm(threshold)

    def arm(self, threshold: int) -> None:
        """Wake the fold thread once this process's sends take their share of the headroom."""
        self.hurry_at = max(1, (threshold - self.fleet) // HEADROOM_SHARE)

    def hurried(self) -> None:
        """This process's sends took their share of the headroom: the fold thread is woken once
        per fold."""
        self.hurry_at = _NEVER
