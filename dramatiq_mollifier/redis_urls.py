"""What the mollifier accepts as a Redis URL: one server, a Redis Cluster, Sentinel."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = [
    "CLUSTER_SLOT_GROUPS",
    "SENTINEL_AUTH_OPTIONS",
    "is_cluster_url",
    "redis_url_problem",
    "slow_timeouts",
    "split_host_port",
]

#: ``slot_groups`` when unset and the URL names a cluster: several groups per primary of a
#: cluster of a few primaries, so the buffer's load spreads over them.
CLUSTER_SLOT_GROUPS = 16
#: Query options of a Sentinel URL that are the Sentinels' credentials, not the primary's options.
SENTINEL_AUTH_OPTIONS = ("sentinel_username", "sentinel_password")

_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)


def split_host_port(item: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` of a URL's comma-separated host list (``[v6]:port`` too) as (host, port)."""
    host, sep, port = item.rpartition(":")
    if not sep or host.endswith(":") or (item.startswith("[") and not host.endswith("]")):
        host, port = item, ""  # no port, or a bare IPv6 address
    return host.strip("[]"), int(port) if port else default_port


def _hosts_problem(netloc: str, what: str) -> str | None:
    """What is wrong with a comma-separated ``host:port`` list, or None."""
    for item in netloc.rpartition("@")[2].split(","):
        if not item or item.startswith(":"):
            return f"no host in {item!r}"
        try:
            _, port = split_host_port(item, 1)  # as the clients read it
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            return f"bad {what} port in {item!r}"
    return None


def redis_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a Redis URL, or None. Shared by the settings and the CLI.

    Catches what redis-py would fail on late (a non-numeric or out-of-range port) or silently
    misread (a database part like ``/abc`` means db 0 to it). Takes one server (``redis://``,
    ``rediss://``, ``unix://``), a cluster (``redis+cluster://``, ``rediss+cluster://``, one or
    more nodes as the seeds, database 0 only) and Sentinel (``redis+sentinel://host:port[,...]/SERVICE[/DB]``).
    """
    if not url.startswith(_URL_SCHEMES):
        return (
            "expected a redis://, rediss://, unix://, redis+cluster://, rediss+cluster:// or "
            "redis+sentinel:// URL"
        )
    parts = urlsplit(url)
    if "cluster" in parts.scheme and "," in parts.netloc:
        # Several seeds: each checked, then the URL as if it named the first alone.
        problem = _hosts_problem(parts.netloc, "seed")
        if problem is not None:
            return problem
        userinfo, at, hosts = parts.netloc.rpartition("@")
        url = parts._replace(netloc=userinfo + at + hosts.split(",")[0]).geturl()
    try:
        parts = urlsplit(url)
        if "sentinel" not in parts.scheme:
            _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        return f"bad port: {exc}"
    if parts.scheme == "unix":
        return _query_problem(url)
    if not parts.hostname:
        return "no host"
    path = [part for part in parts.path.split("/") if part]
    if "sentinel" in parts.scheme:
        problem = _hosts_problem(parts.netloc, "Sentinel")
        if problem is not None:
            return problem
        if not path:
            return "no service name: redis+sentinel://host:port/SERVICE[/DB]"
        if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            return f"database {'/'.join(path[1:])!r} is not a number"
        names = [name for name, _ in parse_qsl(parts.query)]
        for name in ("db", "username", "password"):
            if name in names:
                return (
                    f"query option {name!r} on a Sentinel URL: the database goes in the path "
                    "(/SERVICE/DB), the primary's user and password before the hosts, the "
                    "Sentinels' as sentinel_username and sentinel_password"
                )
        primary_query = [(n, v) for n, v in parse_qsl(parts.query) if n not in SENTINEL_AUTH_OPTIONS]
        return _query_problem("redis://sentinel/?" + urlencode(primary_query))
    db = "/".join(path)
    if db and not db.isdigit():
        return f"database {db!r} is not a number"
    if "cluster" in parts.scheme and db not in ("", "0"):
        return f"a cluster has database 0 only, got {db}"
    problem = _query_problem(url.replace("+cluster://", "://", 1))
    query_db = dict(parse_qsl(parts.query)).get("db", "0")
    if problem is None and "cluster" in parts.scheme and query_db != "0":
        return f"a cluster has database 0 only, got db={query_db} in the query"
    return problem


def _query_problem(url: str) -> str | None:
    """What redis-py would refuse among the URL's query options (``?socket_timeout=abc``) when
    the client is built, or None."""
    from redis.connection import parse_url

    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError) as exc:
        return f"bad query option: {exc}"
    return None


def slow_timeouts(url: str, limit_ms: int) -> str | None:
    """Which of the URL's ``socket_timeout`` and ``socket_connect_timeout`` query options (seconds)
    exceed ``limit_ms``, or None: each send may wait that long on a stalled Redis."""
    query = dict(parse_qsl(urlsplit(url).query))
    slow = []
    for name in ("socket_timeout", "socket_connect_timeout"):
        try:
            seconds = float(query.get(name, 0))
        except ValueError:
            continue  # redis_url_problem names it
        if seconds * 1000 > limit_ms:
            slow.append(f"{name}={query[name]}")
    return ", ".join(slow) or None


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return urlsplit(url).scheme in ("redis+cluster", "rediss+cluster")
