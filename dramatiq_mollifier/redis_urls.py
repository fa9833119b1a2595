"""What the mollifier accepts as a Redis URL: one server, a Redis Cluster, Sentinel."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["CLUSTER_SLOT_GROUPS", "is_cluster_url", "redis_url_problem"]

#: ``slot_groups`` when unset and the URL names a cluster: several groups per primary of a
#: cluster of a few primaries, so the buffer's load spreads over them.
CLUSTER_SLOT_GROUPS = 16

_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a Redis URL, or None. Shared by the settings and the CLI.

    Catches what redis-py would fail on late (a non-numeric or out-of-range port) or silently
    misread (a database part like ``/abc`` means db 0 to it). Takes one server (``redis://``,
    ``rediss://``, ``unix://``), a cluster (``redis+cluster://``, ``rediss+cluster://``, any
    node as the seed, database 0 only) and Sentinel (``redis+sentinel://host:port[,...]/SERVICE[/DB]``).
    """
    if not url.startswith(_URL_SCHEMES):
        return (
            "expected a redis://, rediss://, unix://, redis+cluster://, rediss+cluster:// or "
            "redis+sentinel:// URL"
        )
    try:
        parts = urlsplit(url)
        if "sentinel" not in parts.scheme:
            _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        return f"bad port: {exc}"
    if parts.scheme == "unix":
        return None
    if not parts.hostname:
        return "no host"
    path = [part for part in parts.path.split("/") if part]
    if "sentinel" in parts.scheme:
        for item in parts.netloc.rpartition("@")[2].split(","):
            port = item.rpartition(":")[2]
            if ":" in item and not (port.isdigit() and 0 < int(port) < 65536):
                return f"bad Sentinel port in {item!r}"
        if not path:
            return "no service name: redis+sentinel://host:port/SERVICE[/DB]"
        if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            return f"database {'/'.join(path[1:])!r} is not a number"
        return None
    db = "/".join(path)
    if db and not db.isdigit():
        return f"database {db!r} is not a number"
    if "cluster" in parts.scheme and db not in ("", "0"):
        return f"a cluster has database 0 only, got {db}"
    return _query_problem(url.replace("+cluster://", "://", 1))


def _query_problem(url: str) -> str | None:
    """What redis-py would refuse among the URL's query options (``?socket_timeout=abc``) when
    the client is built, or None."""
    from redis.connection import parse_url

    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        return f"bad query option: {exc}"
    return None


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return urlsplit(url).scheme in ("redis+cluster", "rediss+cluster")
