"""Reading the buffer's keys as they are laid out: one key space on one server, or the org's slot
group on a cluster (``MOLLIFIER_TEST_CLUSTER=1``), so a test checks the same thing on both."""

from __future__ import annotations

from typing import Any

from dramatiq_mollifier import MollifierBuffer
from dramatiq_mollifier.buffer.clients import is_cluster, slot_groups_for
from dramatiq_mollifier.buffer.keys import KeySpace


def group(buffer: MollifierBuffer, org_id: str = "o") -> KeySpace:
    """The key space holding ``org_id``'s keys (the whole key space without slot groups)."""
    return buffer.keys.group_of(org_id)


def entry_key(buffer: MollifierBuffer, message_id: str, org_id: str = "o") -> str:
    """The hash of an entry of ``org_id`` (it sits in its org's group)."""
    return group(buffer, org_id).entry(message_id)


def all_keys(client: Any, pattern: str = "*") -> list[bytes]:
    """Every key matching ``pattern``, on every primary of a cluster."""
    if not is_cluster(client):
        return list(client.keys(pattern))
    found: list[bytes] = []
    for node in client.get_primaries():
        found.extend(client.keys(pattern, target_nodes=node))
    return found


def org_beside(buffer: MollifierBuffer, org_id: str, first: str) -> str:
    """An org other than ``org_id`` in the same slot group (``first`` itself without groups), for
    tests about two orgs meeting in one group's keys."""
    target = group(buffer, org_id)
    for n in range(10_000):
        candidate = first if n == 0 else f"{first}{n}"
        if candidate != org_id and group(buffer, candidate) is target:
            return candidate
    raise AssertionError(f"no org beside {org_id!r}")


def connection_kwargs(client: Any) -> dict[str, Any]:
    """What the client's connections are made with (a cluster's: those of a node's pool)."""
    if is_cluster(client):
        node = client.get_default_node()
        return dict(node.redis_connection.connection_pool.connection_kwargs)
    return dict(client.connection_pool.connection_kwargs)


def key_space(client: Any, key_prefix: str) -> KeySpace:
    """The key names a buffer over ``client`` uses by default (slot groups on a cluster)."""
    return KeySpace(key_prefix, groups=slot_groups_for(None, client))


def command_calls(client: Any, *names: str) -> int:
    """Calls of the commands ``names`` run so far (not those refused), on every primary."""
    if is_cluster(client):
        per_node = [client.info("commandstats", target_nodes=node) for node in client.get_primaries()]
    else:
        per_node = [client.info("commandstats")]
    total = 0
    for stats in per_node:
        for name in names:
            stat = stats.get(f"cmdstat_{name}", {})
            total += int(stat.get("calls", 0)) - int(stat.get("failed_calls", 0))
    return total


def script_calls(client: Any) -> int:
    """EVALSHA and EVAL calls run so far (not those answered NOSCRIPT), on every primary."""
    return command_calls(client, "evalsha", "eval")


def orgs_of_one_group(buffer: MollifierBuffer, count: int, stem: str) -> list[str]:
    """``count`` orgs named ``<stem><n>`` that share one slot group (the first ``count`` without
    groups): a drainer re-probes a group it found empty only about once a second."""
    first = group(buffer, f"{stem}0")
    names = (f"{stem}{n}" for n in range(count * 1_000))
    return [name for name in names if group(buffer, name) is first][:count]
