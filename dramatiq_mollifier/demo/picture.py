"""The demo's picture: the run with the mollifier against the run without it.

Three panels over the same time axis (seconds since the first send): the broker queue's depth
and the buffer's depth, the quiet tenants' waits (send to start of processing), and the burst's
rate as sent and as it reached the broker. Drawn with matplotlib (the ``demo`` extra); without
it there is no picture and the demo says how to get one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .trace import RunTrace

__all__ = ["BIN_MS", "rates", "write_png"]

#: The width of one bar of the rate panel, in milliseconds.
BIN_MS = 200


def rates(times_ms: Iterable[float], start_ms: float, bins: int) -> list[float]:
    """Messages per second in consecutive ``BIN_MS`` bins from ``start_ms``."""
    counts = [0] * bins
    for t in times_ms:
        index = int((t - start_ms) // BIN_MS)
        if 0 <= index < bins:
            counts[index] += 1
    return [c * 1000 / BIN_MS for c in counts]


def write_png(path: Path, *, with_: RunTrace, without: RunTrace, burst: str) -> bool:
    """Draw the two runs; False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (depths, waits, burst_rate) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for trace, style, label in ((without, "--", "without"), (with_, "-", "with")):
        seconds = [(at - trace.start_ms) / 1000 for at, _, _ in trace.depths]
        depths.plot(seconds, [queued for _, queued, _ in trace.depths], linestyle=style, color="tab:red",
                    label=f"broker queue, {label} the mollifier")  # fmt: skip
        if trace.mollified:
            depths.plot(seconds, [buffered for _, _, buffered in trace.depths], color="tab:blue",
                        label="buffer, with the mollifier")  # fmt: skip
        quiet = [w for w in trace.waits if w.tenant != burst]
        waits.scatter([(w.sent_at_ms - trace.start_ms) / 1000 for w in quiet],
                      [max(w.wait_ms, 0.1) for w in quiet], s=10, marker="o" if trace.mollified else "x",
                      color="tab:green" if trace.mollified else "tab:red",
                      label=f"quiet tenants, {label} the mollifier")  # fmt: skip
    end_ms = max((t for t in with_.burst_reached_ms), default=with_.start_ms)
    bins = int((end_ms - with_.start_ms) // BIN_MS) + 2
    seconds = [i * BIN_MS / 1000 for i in range(bins)]
    burst_rate.step(seconds, rates(with_.burst_sent_ms, with_.start_ms, bins), where="post",
                    linestyle=":", color="tab:purple", label=f"{burst} sent")  # fmt: skip
    burst_rate.step(seconds, rates(with_.burst_reached_ms, with_.start_ms, bins), where="post",
                    color="tab:purple", label=f"{burst} reached the broker (with the mollifier)")  # fmt: skip
    depths.set_title("waiting: in the broker queue (FIFO) and in the buffer", fontsize=10, loc="left")
    depths.set_ylabel("messages")
    waits.set_title("quiet tenants: wait from send() to their actor starting", fontsize=10, loc="left")
    waits.set_ylabel("ms (log scale)")
    waits.set_yscale("log")
    burst_rate.set_title(f"the burst: {burst}", fontsize=10, loc="left")
    burst_rate.set_ylabel("messages / s")
    burst_rate.set_xlabel(f"seconds since the first send ({BIN_MS} ms bins)")
    for axis in (depths, waits, burst_rate):
        if axis is not waits:
            axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper right", fontsize=8)
    figure.suptitle("dramatiq-mollifier demo: the same traffic without and with the mollifier")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
