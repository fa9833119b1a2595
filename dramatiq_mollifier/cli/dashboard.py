"""``dramatiq-mollifier dashboard``: serve the operators' web dashboard."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .. import console
from ..buffer import MollifierBuffer
from . import common

DESCRIPTION = """\
Serve the web dashboard: the buffer's depth and a live chart, every tenant (sortable, filterable),
a message lookup, the dead letters, and actions (enrol, pause, resume, cancel, retry, purge) with a
confirmation step for destructive ones. Needs pip install -e '.[dashboard]' in a checkout.

It listens on 127.0.0.1 unless told otherwise, and then serves loopback clients only. To listen on
another address, give a token (MOLLIFIER_DASHBOARD_TOKEN, at least 16 characters; open
http://HOST:PORT/?token=TOKEN once) or basic auth (MOLLIFIER_DASHBOARD_BASIC_AUTH=user:password).
Every action also needs the page's CSRF value."""

EPILOG = f"""\
examples:
  dramatiq-mollifier dashboard
  dramatiq-mollifier dashboard --port 9000 --broker-queue default
  MOLLIFIER_DASHBOARD_TOKEN=$(openssl rand -hex 16) dramatiq-mollifier dashboard --host 0.0.0.0

{common.EXIT_CODES_HELP}"""

TOKEN_VARIABLE = "MOLLIFIER_DASHBOARD_TOKEN"
BASIC_AUTH_VARIABLE = "MOLLIFIER_DASHBOARD_BASIC_AUTH"


#: As :mod:`dramatiq_mollifier.dashboard.serve` has them; kept here so that ``--help`` works
#: without the dashboard's extra installed.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard (loopback only by default)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)"
    )
    parser.add_argument(
        "--broker-queue",
        action="append",
        default=[],
        metavar="QUEUE",
        help="a Dramatiq Redis-broker queue whose depth the chart shows (repeatable)",
    )
    parser.add_argument(
        "--broker-url",
        metavar="URL",
        help="the Redis broker's URL, for --broker-queue (default: the buffer's, --redis-url)",
    )
    parser.add_argument(
        "--broker-namespace",
        default="dramatiq",
        metavar="NS",
        help="the Redis broker's namespace (default dramatiq)",
    )
    common.add_connection_arguments(parser)
    parser.set_defaults(func=run)


def _basic_auth() -> tuple[str, str] | None:
    raw = os.environ.get(BASIC_AUTH_VARIABLE, "").strip("\r\n")  # a secret file's last newline
    if not raw:
        return None
    user, colon, password = raw.partition(":")
    if not colon or not user or not password:
        raise console.CommandError(
            f"{BASIC_AUTH_VARIABLE} must be user:password", exit_code=console.EXIT_CONFIG
        )
    return user, password


@common.command
def run(args: argparse.Namespace) -> int:
    try:
        from ..dashboard import create_app, serve
        from ..dashboard.broker_depth import redis_queue_depth
    except ImportError as exc:
        raise console.CommandError(
            f"the dashboard needs its extra: pip install -e '.[dashboard]' in a checkout ({exc})",
            exit_code=console.EXIT_CONFIG,
        ) from exc
    if not 0 <= args.port <= 65535:
        raise console.CommandError("--port must be within 0..65535", exit_code=console.EXIT_CONFIG)
    settings = common.settings_from_args(args)
    client = console.connect(settings.redis_url)
    console.check_layout(client, MollifierBuffer(client, **settings.buffer_options))
    broker_client = console.connect(args.broker_url) if args.broker_url else client
    broker_depth = (
        redis_queue_depth(broker_client, args.broker_namespace, args.broker_queue)
        if args.broker_queue
        else None
    )
    try:
        app = create_app(
            settings=settings,
            client=client,
            # Stripped: a token read from a secret file ends with a newline
            token=os.environ.get(TOKEN_VARIABLE, "").strip() or None,
            basic_auth=_basic_auth(),
            broker_depth=broker_depth,
        )
    except ValueError as exc:
        raise console.CommandError(str(exc), exit_code=console.EXIT_CONFIG) from exc

    def ready(url: str) -> None:
        print(f"Dashboard of {console.redact_url(settings.redis_url)} (key prefix {settings.key_prefix!r})")
        print(f"Serving on {url} (Ctrl-C to stop)", flush=True)

    try:
        serve(app, host=args.host, port=args.port, on_ready=ready)
    except ValueError as exc:
        raise console.CommandError(str(exc), exit_code=console.EXIT_CONFIG) from exc
    except OSError as exc:
        raise console.CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc}", exit_code=console.EXIT_CONFIG
        ) from exc
    finally:
        client.close()
    print("Stopped.", file=sys.stderr)
    return console.EXIT_OK
