"""``dramatiq-mollifier drain APP``: run only the drainer, for deployments that drain apart from workers."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import signal
import sys
import threading
import traceback
from types import FrameType
from typing import Any

import dramatiq

from .. import console
from ..drain.worker_drainer import WorkerDrainer
from ..errors import MollifierConfigurationError
from ..middleware import Mollifier
from . import common

DESCRIPTION = """\
Run the mollifier's drainer, and nothing else, for the broker defined in APP (a module, or
module:broker, as the dramatiq command takes it): buffered messages go back onto that broker,
fairly across orgs and envs, until SIGTERM or SIGINT, which stop the drainer within
drain_shutdown_timeout_ms. The broker must have the Mollifier middleware; its settings (and the
MOLLIFIER_* environment) size the drainer. Workers usually drain themselves; run this where they
are started with MOLLIFIER_DRAINER_ENABLED=false. Any number of drainers may share one buffer."""

EPILOG = """\
examples:
  dramatiq-mollifier drain myapp.tasks
  dramatiq-mollifier drain myapp.tasks:broker --path src
  MOLLIFIER_DRAIN_CONCURRENCY=100 python -m dramatiq_mollifier drain myapp.tasks

exit codes: 0 stopped cleanly; 1 handlers still ran at the shutdown deadline (their entries stay
  leased and are reclaimed); 2 APP cannot be imported, has no Mollifier, or bad settings."""

logger = logging.getLogger("dramatiq_mollifier.cli.drain")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "drain",
        help="run only the drainer for the broker of an app module, until SIGTERM",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    parser.add_argument("app", metavar="APP", help="module (or module:broker) that sets up the broker")
    parser.add_argument(
        "--path",
        "-P",
        action="append",
        default=[],
        metavar="DIR",
        help="directory to import APP from, before sys.path (repeatable; default: the current one)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG level")
    parser.set_defaults(func=run)


def find_mollifier(broker: dramatiq.Broker) -> Mollifier | None:
    """The :class:`~dramatiq_mollifier.Mollifier` middleware of ``broker``, or None."""
    return next((m for m in broker.middleware if isinstance(m, Mollifier)), None)


def load_broker(app: str, paths: list[str]) -> dramatiq.Broker:
    """Import ``app`` as the ``dramatiq`` command does: ``module`` or ``module:attribute``.

    The attribute may be a broker or a callable that sets one up; a bare module must set the
    global broker (``dramatiq.set_broker``) when imported.
    """
    for path in reversed(paths or ["."]):
        sys.path.insert(0, path)
    module_name, _, attribute = app.partition(":")
    try:
        module = importlib.import_module(module_name)
        target = functools.reduce(getattr, attribute.split("."), module) if attribute else None
    except (ImportError, AttributeError) as exc:
        raise console.CommandError(f"cannot import {app!r}: {exc}", exit_code=console.EXIT_CONFIG) from exc
    except MollifierConfigurationError:
        raise  # its own message, exit 2
    except Exception as exc:
        raise _app_failed(app, "importing", exc) from exc
    if isinstance(target, dramatiq.Broker):
        return target
    if target is not None:
        if not callable(target):
            raise console.CommandError(f"{app!r} is not a broker", exit_code=console.EXIT_CONFIG)
        try:
            target()
        except MollifierConfigurationError:
            raise
        except Exception as exc:
            raise _app_failed(app, "calling", exc) from exc
    return dramatiq.get_broker()


def _app_failed(app: str, doing: str, exc: Exception) -> console.CommandError:
    """The app's own code raised: a configuration problem of the deployment, exit 2."""
    where = ""
    if exc.__traceback__ is not None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f" at {frame.filename}:{frame.lineno}"
    return console.CommandError(
        f"{doing} {app!r} raised {type(exc).__name__}{where}: {exc}", exit_code=console.EXIT_CONFIG
    )


@common.command
def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s",
    )
    broker = load_broker(args.app, args.path)
    mollifier = find_mollifier(broker)
    if mollifier is None:
        raise console.CommandError(
            f"the broker of {args.app!r} has no Mollifier middleware "
            "(add one with broker.add_middleware(Mollifier(...)))",
            exit_code=console.EXIT_CONFIG,
        )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            logger.warning("Second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(console.EXIT_PROBLEM)
        logger.info("%s received: stopping the drainer", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The app's Mollifier, as in a worker: the move in Redis (drain/redis_move.py) runs only when
    # no enqueue hook but this middleware's would be skipped.
    worker_drainer = WorkerDrainer(
        settings=mollifier.settings,
        buffer=mollifier.buffer,
        telemetry=mollifier.telemetry,
        middleware=mollifier,
    )
    worker_drainer.start(broker)
    while not stop.wait(0.5):
        pass
    stopped = worker_drainer.stop()
    broker.close()
    return console.EXIT_OK if stopped else console.EXIT_PROBLEM
