"""``dramatiq-mollifier stats``: what the buffer holds right now."""

from __future__ import annotations

import argparse
from typing import Any

import redis

from .. import console
from ..buffer import MollifierBuffer
from ..buffer.listing import ListingScripts, env_depths
from . import common

DESCRIPTION = """\
Show what the mollifier's buffer holds: buffered messages (QUEUED and DRAINING) and the age of
the oldest per org and env, the envs whose trip marker is live now, the paused orgs and envs
(see 'dramatiq-mollifier pause'), and the dead letters
(FAILED entries; see 'dramatiq-mollifier failed')."""

EPILOG = f"""\
examples:
  dramatiq-mollifier stats
  dramatiq-mollifier stats --org acme
  dramatiq-mollifier stats --json | jq .depth
  MOLLIFIER_REDIS_URL=redis://cache:6379/2 dramatiq-mollifier stats

{common.EXIT_CODES_HELP}"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "stats",
        help="buffer depth and oldest age per org and env, tripped envs, dead letters",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=common.help_formatter,
    )
    parser.add_argument("--org", metavar="ORG", help="only this org")
    parser.add_argument("--json", action="store_true", help="print one JSON document (for machines)")
    common.add_connection_arguments(parser)
    parser.set_defaults(func=run)


def collect(buffer: MollifierBuffer, client: redis.Redis, org_id: str | None = None) -> dict[str, Any]:
    """The numbers ``stats`` prints, as a JSON-ready dict. Ages use the Redis server's clock."""
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    paused = [p for p in buffer.controls.paused() if org_id is None or p.org_id == org_id]
    held = {(p.org_id, p.env_id) for p in paused}
    envs = []
    # Every env with QUEUED or DRAINING entries, as the total counts them (an env whose entries
    # were all popped was left out, and the rows did not add up to the depth).
    keys = buffer.keys if org_id is None else buffer.keys.group_of(org_id)
    depths = env_depths(ListingScripts(buffer.client), keys)
    for (org, env), depth in sorted(depths.items()):
        if org_id is None or org == org_id:
            oldest = buffer.oldest_created_at(org, env)
            envs.append(
                {
                    "org_id": org,
                    "env_id": env,
                    "depth": depth,
                    "paused": (org, None) in held or (org, env) in held,
                    "oldest_age_ms": None
                    if oldest is None
                    else max(0, now_ms - int(oldest.timestamp() * 1000)),
                }
            )
    failed_by_env = buffer.failed_counts(org_id)
    return {
        "org_id": org_id,
        "depth": buffer.depth(org_id),
        "envs": envs,
        "tripped": [
            {"org_id": t.org_id, "env_id": t.env_id}
            for t in buffer.tripped()
            if org_id is None or t.org_id == org_id
        ],
        "paused": [{"org_id": p.org_id, "env_id": p.env_id} for p in paused],
        "failed": sum(failed_by_env.values()),
        "failed_by_env": [
            {"org_id": org, "env_id": env, "count": count}
            for (org, env), count in sorted(failed_by_env.items())
        ],
    }


def format_age(age_ms: int | None) -> str:
    """``850 ms``, ``12.3 s``, ``4.5 min`` or ``2.0 h``."""
    if age_ms is None:
        return "-"
    if age_ms < 1000:
        return f"{age_ms} ms"
    if age_ms < 60_000:
        return f"{age_ms / 1000:.1f} s"
    if age_ms < 3_600_000:
        return f"{age_ms / 60_000:.1f} min"
    return f"{age_ms / 3_600_000:.1f} h"


def render(stats: dict[str, Any], *, where: str) -> str:
    """The human-readable report."""
    scope = f" of org {stats['org_id']!r}" if stats["org_id"] is not None else ""
    lines = [f"Buffer{scope} at {where}", f"  buffered messages: {stats['depth']:,}"]
    if stats["envs"]:
        rows: list[tuple[object, ...]] = [
            (
                e["org_id"],
                e["env_id"],
                e["depth"],
                format_age(e["oldest_age_ms"]),
                "paused" if e["paused"] else "",
            )
            for e in stats["envs"]
        ]
        lines += ["", console.format_table(("ORG", "ENV", "DEPTH", "OLDEST", "STATE"), rows)]
    tripped = ", ".join(f"{t['org_id']}/{t['env_id']}" for t in stats["tripped"]) or "none"
    paused = (
        ", ".join(
            f"{p['org_id']}/{p['env_id']}" if p["env_id"] else f"{p['org_id']} (every env)"
            for p in stats["paused"]
        )
        or "none"
    )
    lines += ["", f"Tripped now: {tripped}", f"Paused: {paused}", f"Dead letters: {stats['failed']:,}"]
    if stats["failed_by_env"]:
        rows = [(f["org_id"], f["env_id"], f["count"]) for f in stats["failed_by_env"]]
        lines += ["", console.format_table(("ORG", "ENV", "FAILED"), rows)]
        lines.append("(inspect with: dramatiq-mollifier failed list)")
    return "\n".join(lines)


@common.command
def run(args: argparse.Namespace) -> int:
    settings = common.settings_from_args(args)
    with console.open_buffer(settings) as (buffer, client):
        stats = collect(buffer, client, args.org)
    if args.json:
        common.print_json(
            {"redis_url": console.redact_url(settings.redis_url), "key_prefix": settings.key_prefix, **stats}
        )
    else:
        where = f"{console.redact_url(settings.redis_url)} (key prefix {settings.key_prefix!r})"
        print(render(stats, where=where))
    return console.EXIT_OK
