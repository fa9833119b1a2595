"""Make a burst: one tenant fires thousands of events while two others keep a steady pace.

From the repository root, with a worker running (``dramatiq examples.app``)::

    REDIS_URL=redis://localhost:6379/0 python -m examples.producer --burst 3000

Then watch it drain with ``dramatiq-mollifier stats --redis-url "${BUFFER_REDIS_URL:-$REDIS_URL}"``
(the CLI reads ``MOLLIFIER_REDIS_URL``, not the example's variables).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence

from examples.app import send_receipt, track

#: The tenants that keep sending at a steady pace while the burst goes on.
STEADY_TENANTS = (("globex", "prod"), ("initech", "eu"))


def send(org_id: str, env_id: str, count: int, *, per_second: float | None = None) -> None:
    """``count`` events for one tenant, paced at ``per_second`` (None: as fast as possible)."""
    start = time.monotonic()
    for i in range(count):
        if per_second is not None:
            time.sleep(max(0.0, start + i / per_second - time.monotonic()))
        track(org_id, env_id, {"id": f"{org_id}/{env_id}/{i}", "kind": "page_view"})
    send_receipt.send(org_id, count)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--org", default="acme", help="the noisy org (default acme)")
    parser.add_argument("--burst", type=int, default=3000, help="events in its burst (default 3000)")
    parser.add_argument("--steady", type=int, default=40, help="events per steady tenant (default 40)")
    parser.add_argument("--rate", type=float, default=20.0, help="steady events per second (default 20)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(args.org, "prod", args.burst))]
    threads += [
        threading.Thread(target=send, args=(org_id, env_id, args.steady), kwargs={"per_second": args.rate})
        for org_id, env_id in STEADY_TENANTS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    print(f"{args.org}/prod sent {args.burst:,} events; ", end="")
    print(", ".join(f"{o}/{e} sent {args.steady}" for o, e in STEADY_TENANTS), f"({elapsed:.1f} s)")


if __name__ == "__main__":
    main()
