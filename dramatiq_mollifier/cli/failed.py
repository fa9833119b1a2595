"""``dramatiq-mollifier failed``: list, retry and purge dead-lettered buffer entries."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import console
from ..buffer import MollifierBuffer
from ..models import BufferEntry
from . import common

DESCRIPTION = """\
Work with the dead letters: buffered messages the drainer could not put back on the broker
within MOLLIFIER_DRAIN_MAX_ATTEMPTS attempts, kept as FAILED with their last error."""

EPILOG = f"""\
examples:
  dramatiq-mollifier failed list
  dramatiq-mollifier failed list --org acme --env prod --json
  dramatiq-mollifier failed retry 8f14e45f-ceea-467f-a0f6-6ad2b4f5e1a7
  dramatiq-mollifier failed retry --all --org acme      # every dead letter of acme
  dramatiq-mollifier failed purge --org acme --env prod
  dramatiq-mollifier failed purge --yes                 # every dead letter, every org

'retry' puts entries back at the tail of their env's queue with their attempts reset; a running
drainer then delivers them. 'purge' deletes for good and never prompts: it needs --org (and
optionally --env) to narrow it, or --yes to delete every dead letter.

{common.EXIT_CODES_HELP}"""

#: How many characters of an error message ``failed list`` shows in its table.
ERROR_WIDTH = 60


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "failed",
        help="list, retry or purge dead-lettered (FAILED) entries",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list",
        help="list dead letters, oldest failure first",
        description="List dead letters (FAILED entries), oldest failure first, with their last error.",
    )
    _add_filters(listing)
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="show at most N (default 100)")
    listing.add_argument(
        "--json", action="store_true", help="print one JSON document (at most --limit entries)"
    )
    common.add_connection_arguments(listing)

    retry = actions.add_parser(
        "retry",
        help="put dead letters back in their queue",
        description="Put dead letters back at the tail of their env's queue, attempts reset to 0, "
        "for a running drainer to deliver. Give message ids, or --all (narrowed by --org/--env). "
        "Exits 1 if an id is not a dead letter (the others are still retried).",
    )
    retry.add_argument("message_ids", nargs="*", metavar="ID", help="message ids to retry")
    retry.add_argument("--all", action="store_true", help="retry every dead letter matching the filters")
    _add_filters(retry)
    common.add_connection_arguments(retry)

    purge = actions.add_parser(
        "purge",
        help="delete dead letters for good",
        description="Delete dead letters for good, without prompting: an org's (--org), an env's "
        "(--org and --env), or every one (--yes).",
    )
    _add_filters(purge)
    purge.add_argument("--yes", action="store_true", help="required to purge without --org")
    common.add_connection_arguments(purge)
    parser.set_defaults(func=run)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", metavar="ORG", help="only this org's dead letters")
    parser.add_argument("--env", metavar="ENV", help="only this env of --org")


def entry_json(entry: BufferEntry, payload_bytes: int | None = None) -> dict[str, Any]:
    """An entry as JSON, without its payload (which may be binary and large)."""
    code, message = entry.last_error or (None, None)
    return {
        "message_id": entry.message_id,
        "org_id": entry.org_id,
        "env_id": entry.env_id,
        "attempts": entry.attempts,
        "created_at": entry.created_at.isoformat(),
        "error_code": code,
        "error_message": message,
        "payload_bytes": len(entry.payload) if payload_bytes is None else payload_bytes,
    }


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"


def _list(buffer: MollifierBuffer, args: argparse.Namespace) -> int:
    # Reads only the entries it prints, and none of their payloads.
    entries, sizes, total = buffer.failed_page(args.org, args.env, limit=args.limit)
    if args.json:
        common.print_json([entry_json(e, size) for e, size in zip(entries, sizes, strict=True)])
        return console.EXIT_OK
    if not entries:
        print("No dead letters.")
        return console.EXIT_OK
    rows = [
        (
            e.message_id,
            e.org_id,
            e.env_id,
            e.attempts,
            e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            _shorten(": ".join(e.last_error) if e.last_error else "-"),
        )
        for e in entries
    ]
    print(console.format_table(("MESSAGE ID", "ORG", "ENV", "ATTEMPTS", "CREATED (UTC)", "LAST ERROR"), rows))
    if total > len(entries):
        print(f"... and {total - len(entries):,} more (--limit N to see more)")
    return console.EXIT_OK


def _retry(buffer: MollifierBuffer, args: argparse.Namespace) -> int:
    # An id given twice is retried once (the second would find no dead letter and say so).
    ids = list(dict.fromkeys(args.message_ids)) or buffer.failed_ids(args.org, args.env)
    retried = 0
    unknown = []
    for message_id in ids:
        if buffer.retry_failed(message_id):
            retried += 1
        else:
            unknown.append(message_id)
    print(f"Retried {retried:,} dead letter{'s' if retried != 1 else ''}: back in their queues.")
    for message_id in unknown:
        print(f"dramatiq-mollifier: error: no dead letter with id {message_id!r}", file=sys.stderr)
    return console.EXIT_PROBLEM if unknown else console.EXIT_OK


def _purge(buffer: MollifierBuffer, args: argparse.Namespace) -> int:
    purged = buffer.purge_failed(args.org, args.env)
    print(f"Purged {purged:,} dead letter{'s' if purged != 1 else ''}.")
    return console.EXIT_OK


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors, reported before connecting to anything."""

    def usage(message: str) -> console.CommandError:
        return console.CommandError(message, exit_code=console.EXIT_CONFIG)

    if args.env is not None and args.org is None:
        # Envs are scoped by their org: "prod" of one org is not "prod" of another.
        raise usage("--env needs --org (envs belong to an org)")
    if args.action == "list" and args.limit < 1:
        raise usage("--limit must be at least 1")
    if args.action == "retry":
        if args.all == bool(args.message_ids):
            raise usage("give message ids or --all (with optional --org/--env), one or the other")
        if args.message_ids and args.org is not None:
            raise usage("--org and --env narrow --all; they do not apply to message ids")
    if args.action == "purge" and args.org is None and not args.yes:
        raise usage(
            "purge deletes for good: narrow it with --org [--env], or pass --yes to delete every dead letter"
        )


@common.command
def run(args: argparse.Namespace) -> int:
    _check_args(args)
    settings = common.settings_from_args(args)
    with console.open_buffer(settings) as (buffer, _client):
        if args.action == "list":
            return _list(buffer, args)
        if args.action == "retry":
            return _retry(buffer, args)
        return _purge(buffer, args)
