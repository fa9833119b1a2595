"""What the per-message and per-tenant commands share: opening the controls, naming a tenant."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from ..buffer import MollifierBuffer
from ..buffer.controls import TenantControls
from . import common

__all__ = ["add_tenant_arguments", "open_controls", "tenant_name"]


@contextmanager
def open_controls(args: argparse.Namespace) -> Iterator[tuple[TenantControls, MollifierBuffer]]:
    """The controls of the buffer the middleware of these settings writes to, and the buffer."""
    settings = common.settings_from_args(args)
    with common.open_buffer(settings) as (buffer, client):
        yield TenantControls(client, key_prefix=settings.key_prefix, settings=settings), buffer


def add_tenant_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``ORG`` and ``--env ENV``."""
    parser.add_argument("org_id", metavar="ORG", help=f"the org to {what}")
    parser.add_argument(
        "--env", dest="env_id", metavar="ENV", help="only this env of ORG (default: every env)"
    )
    common.add_connection_arguments(parser)


def tenant_name(org_id: str, env_id: str | None) -> str:
    """``acme/prod``, or ``acme (every env)``."""
    return f"{org_id}/{env_id}" if env_id is not None else f"{org_id} (every env)"
