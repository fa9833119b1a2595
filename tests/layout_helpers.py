"""Reading the buffer's keys as they are laid out: one key space on one server, or the org's slot
group on a cluster (``MOLLIFIER_TEST_CLUSTER=1``), so a test checks the same thing on both."""

from __future__ import annotations

from typing import Any

from dramatiq_mollifier import MollifierBuffer
from dramatiq_mollifier.buffer.clients import is_cluster
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
