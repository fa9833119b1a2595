"""``MollifierBuffer``: the Redis buffer that holds diverted messages until a drainer puts them
back on the broker.

Every multi-step operation is one atomic Lua script from ``lua/``; Redis errors are wrapped in
:class:`BufferUnavailableError` at the boundary (:mod:`.codec`). The key layout is in :mod:`.keys`.
This module is the send side (the gate's calls); :mod:`.admin` is the operator's side and
:mod:`.drain_protocol` the drainers'.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import ConstantBackoff
from redis.commands.core import Script
from redis.retry import Retry

from ..errors import MollifierConfigurationError
from ..models import TripDecision, TripWindow
from ..settings import default_of
from . import forks
from .admin import BufferAdmin
from .clients import client_from_url, is_cluster, slot_groups_for
from .codec import FAILURES, wrap
from .controls import TenantControls
from .core import DEFAULT_LEASE_MS
from .durable import run_acknowledged
from .scripts import force_command_path, run, run_pipelined, script_source

__all__ = [
    "WRITE_MODES",
    "DEFAULT_CONNECT_TIMEOUT_MS",
    "DEFAULT_LEASE_MS",
    "DEFAULT_SOCKET_TIMEOUT_MS",
    "MollifierBuffer",
    "connection_retry",
]

#: ``from_url``: how long one Redis command may wait for its reply. A ``send()`` must never hang
#: long because of the mollifier.
DEFAULT_SOCKET_TIMEOUT_MS = 500
#: ``from_url``: how long opening a connection may take.
DEFAULT_CONNECT_TIMEOUT_MS = 500
#: ``from_url``: retries of a command after a connection error (one, for a stale pooled socket).
DEFAULT_CONNECTION_RETRIES = 1
#: The modes an entry may record, as ``MollifierMode`` spells them; the first is the default.
WRITE_MODES = ("divert", "dual_write")
#: Envs folded by one script call; a larger fold is split into calls pipelined in one round trip.
FOLD_ENVS_PER_CALL = 256
# Distinct (window, threshold, hold, entry TTL) settings whose encoded form is kept.
_TRIP_ARGS_CACHE_SIZE = 64


def connection_retry() -> Retry:
    """One quick retry after a connection error (a stale pooled socket), none after a timeout:
    a server that did not answer within the socket timeout will not answer a second time either.
    A constant 15 ms: jitter spreads nothing with one retry, and redis-py's jitter draws from the
    global ``random``, which is the application's (a background refresh would perturb it)."""
    return Retry(
        ConstantBackoff(0.015),
        DEFAULT_CONNECTION_RETRIES,
        supported_errors=(redis.ConnectionError,),
    )


@functools.lru_cache(maxsize=_TRIP_ARGS_CACHE_SIZE)
def _trip_argv(
    window_ms: int, threshold: int, hold_ms: int, ttl_ms: int
) -> tuple[bytes, bytes, bytes, bytes]:
    """Those ARGV of the trip scripts, encoded once per distinct setting."""
    return b"%d" % window_ms, b"%d" % threshold, b"%d" % hold_ms, b"%d" % ttl_ms


def _decodes_responses(client: Any) -> bool:
    try:
        return bool(client.get_encoder().decode_responses)
    except AttributeError:  # not a redis-py client we know: its own calls will tell
        return False


class MollifierBuffer(BufferAdmin):
    """Per-env FIFO queues of buffered messages, with org/env indexes, leases and dead letters.

    Parameters:
      client, key_prefix, entry_ttl_s, lease_ms: As :class:`~.core.BufferCore`; the client must
        not decode responses (payloads are bytes).
      mode: The mode recorded in every entry this buffer accepts, ``divert`` (the buffer holds
        the only copy) or ``dual_write`` (the broker has it too): a drainer handles each entry by
        the mode that wrote it, whatever its own. Defaults to ``divert``.
      direct_hot_path: Let the send-side scripts skip ``execute_command`` where that is safe
        (see :func:`~.scripts.direct_path_allowed`). False keeps every call on redis-py's
        command path, for users who trace Redis calls. Defaults to True.
      slot_groups: As :class:`~.core.BufferCore`; a ``RedisCluster`` client needs at least 1.
        Defaults to None: 16 for a ``RedisCluster`` client, else 0.
      wait_replicas, wait_timeout_ms: After each accept, wait (``WAIT``) for this many replicas to
        acknowledge it, at most this long; fewer raise (see :mod:`.durable`). Defaults to 0: no wait.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = default_of("key_prefix"),
        entry_ttl_s: int | None = None,
        lease_ms: int = DEFAULT_LEASE_MS,
        mode: str = WRITE_MODES[0],
        direct_hot_path: bool = True,
        slot_groups: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        if _decodes_responses(client):
            raise MollifierConfigurationError(
                "the mollifier's Redis client must have decode_responses=False: payloads are bytes, "
                "and a decoding client cannot read them back (entries would never drain)"
            )
        slot_groups = slot_groups_for(slot_groups, client)
        if is_cluster(client) and not slot_groups:
            raise MollifierConfigurationError(
                "a Redis Cluster client needs slot_groups of at least 1 (MOLLIFIER_SLOT_GROUPS; unset "
                "with a cluster URL: 16): without slot groups a script's keys fall in many slots"
            )
        super().__init__(
            client, key_prefix=key_prefix, entry_ttl_s=entry_ttl_s, lease_ms=lease_ms, slot_groups=slot_groups
        )
        if mode not in WRITE_MODES:
            raise MollifierConfigurationError(f"mode must be one of {WRITE_MODES}, got {mode!r}")
        self.mode = mode
        if not 0 <= wait_replicas <= 16 or not 1 <= wait_timeout_ms <= 10_000:
            raise MollifierConfigurationError(
                "wait_replicas must be 0 to 16 and wait_timeout_ms 1 to 10000, "
                f"got {wait_replicas} and {wait_timeout_ms}"
            )
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._mode_arg = mode.encode("utf-8")
        if not direct_hot_path:
            force_command_path(client)
        self._controls: TenantControls | None = None
        self._accept_capped: Script | None = None
        forks.register(client)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> MollifierBuffer:
        """Build a buffer over a new client for ``url`` with bounded socket timeouts.

        ``key_prefix``, ``entry_ttl_s`` and ``lease_ms`` go to the buffer; any other keyword goes
        to ``redis.Redis.from_url`` and overrides the defaults: RESP3, socket and connect timeouts
        of :data:`DEFAULT_SOCKET_TIMEOUT_MS` and :data:`DEFAULT_CONNECT_TIMEOUT_MS`, and one quick
        retry after a connection error (:func:`connection_retry`).
        """
        own = {
            name: kwargs.pop(name)
            for name in (
                "key_prefix",
                "entry_ttl_s",
                "lease_ms",
                "mode",
                "direct_hot_path",
                "slot_groups",
                "wait_replicas",
                "wait_timeout_ms",
            )
            if name in kwargs
        }
        if kwargs.get("decode_responses"):
            raise MollifierConfigurationError("the buffer needs decode_responses=False (payloads are bytes)")
        kwargs["decode_responses"] = False
        kwargs.setdefault("protocol", 3)
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT_MS / 1000)
        kwargs.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT_MS / 1000)
        kwargs.setdefault("retry", connection_retry())
        return cls(client_from_url(url, **kwargs), **own)

    @property
    def controls(self) -> TenantControls:
        """Look up, cancel, pause, cap and weigh buffered work (same client and key prefix)."""
        controls = self._controls
        if controls is None:
            controls = self._controls = TenantControls(
                self.client, key_prefix=self.key_prefix, slot_groups=self.slot_groups
            )
        return controls

    # Enqueue side ---------------------------------------------------------------------------
    def accept(self, message_id: str, *, org_id: str, env_id: str, payload: bytes) -> bool:
        """Store a QUEUED entry and append it to its env's queue. False if the id exists."""
        keys = self.keys
        t = keys.tenant(org_id, env_id)
        try:
            reply = self._write(
                self.scripts.accept,
                9,
                t.space.entry(message_id),
                *t.accept_keys,
                message_id,
                *t.ids,
                payload,
                self.ttl_ms,
                self._mode_arg,
            )
            return bool(reply == 1)
        except FAILURES as exc:
            raise wrap("accept", exc) from exc

    def accept_capped(
        self,
        message_id: str,
        *,
        org_id: str,
        env_id: str,
        payload: bytes,
        env_cap: int | None,
        org_cap: int | None,
        dead_letter: bool,
    ) -> int:
        """:meth:`accept` under caps (see ``lua/accept_capped.lua``): 1 stored, 0 the id exists,
        2 or 3 over the env's or the org's cap (not stored), 4 or 5 the same, dead-lettered."""
        keys = self.keys
        t = keys.tenant(org_id, env_id)
        if self._accept_capped is None:
            self._accept_capped = self.client.register_script(script_source("accept_capped"))
        try:
            return int(
                self._write(
                    self._accept_capped,
                    12,
                    t.space.entry(message_id),
                    *t.accept_keys,
                    t.failed,
                    t.failed_envs,
                    t.space.failed_orgs,
                    message_id,
                    *t.ids,
                    payload,
                    self.ttl_ms,
                    self._mode_arg,
                    -1 if env_cap is None else env_cap,
                    -1 if org_cap is None else org_cap,
                    1 if dead_letter else 0,
                    f"the env's cap of {env_cap} buffered messages was reached",
                    f"the org's cap of {org_cap} buffered messages was reached",
                )
            )
        except FAILURES as exc:
            raise wrap("accept_capped", exc) from exc

    def evaluate_trip(
        self, org_id: str, env_id: str, *, window_ms: int, threshold: int, hold_ms: int
    ) -> TripDecision:
        """Count one enqueue for the env and say whether it is tripped, or still has a backlog
        (one round trip)."""
        t = self.keys.tenant(org_id, env_id)
        try:
            window, limit, hold, _ = self._encoded_trip_args(window_ms, threshold, hold_ms)
            reply = run(
                self.client, self.scripts.evaluate_trip, 4, *t.evaluate_keys, window, limit, hold, *t.ids
            )
            return TripDecision(reply & 1 == 1, reply >> 1)
        except FAILURES as exc:
            raise wrap("evaluate_trip", exc) from exc

    def evaluate_trip_and_accept(
        self,
        message_id: str,
        *,
        org_id: str,
        env_id: str,
        payload: bytes,
        window_ms: int,
        threshold: int,
        hold_ms: int,
    ) -> tuple[TripDecision, bool]:
        """``evaluate_trip`` then, only when tripped, ``accept``: one script, one round trip.

        Returns the decision and whether the entry was accepted (False when not tripped or when
        the id already exists).
        """
        keys = self.keys
        t = keys.tenant(org_id, env_id)
        try:
            reply = self._write(
                self.scripts.evaluate_trip_and_accept,
                12,
                *t.trip_keys,
                t.space.entry(message_id),
                *t.accept_keys,
                *self._encoded_trip_args(window_ms, threshold, hold_ms),
                message_id,
                *t.ids,
                payload,
                self._mode_arg,
            )
            return TripDecision(reply & 2 == 2, reply >> 2), reply & 1 == 1
        except FAILURES as exc:
            raise wrap("evaluate_trip_and_accept", exc) from exc

    def fold_trip_counts(
        self,
        counts: Sequence[tuple[str, str, int]],
        *,
        window_ms: int,
        threshold: int,
        hold_ms: int,
        global_threshold: int = 0,
    ) -> tuple[TripWindow, list[TripWindow]]:
        """Add locally counted enqueues ``(org, env, n)`` to the fleet's trip windows.

        One round trip whatever the number of envs. Returns the fleet-wide window (all zeros
        when ``global_threshold`` is 0) and each env's window, in the order of ``counts``.
        """
        keys = self.keys
        window, limit, hold, _ = self._encoded_trip_args(window_ms, threshold, hold_ms)
        total = sum(n for _, _, n in counts)
        settings: tuple[bytes, ...] = (window, limit, hold, b"%d" % global_threshold, b"%d" % total)
        # Each call folds envs of one slot group (the only group without slot groups).
        by_group: dict[int, list[int]] = {}
        tenants = [keys.tenant(org_id, env_id) for org_id, env_id, _ in counts]
        for i, t in enumerate(tenants):
            by_group.setdefault(id(t.space), []).append(i)
        calls: list[tuple[Sequence[str | bytes], Sequence[str | int | bytes]]] = []
        order: list[int] = []
        if keys.group_count and global_threshold:
            # The fleet-wide window lives under {fleet}, not in whichever group comes first.
            fleet_keys = (keys.tripped, keys.depth, keys.global_trip_counter, keys.global_trip_hold)
            calls.append((fleet_keys, settings))
            settings = (window, limit, hold, b"0", b"0")
        for indexes in by_group.values() or [[]]:
            space = tenants[indexes[0]].space if indexes else keys
            head = (space.tripped, space.depth, space.global_trip_counter, space.global_trip_hold)
            for start in range(0, max(len(indexes), 1), FOLD_ENVS_PER_CALL):
                call_keys: list[str | bytes] = [*head]
                call_args: list[str | int | bytes] = [*settings]
                for i in indexes[start : start + FOLD_ENVS_PER_CALL]:
                    call_keys += tenants[i].trip_keys[:2]  # counter and hold marker, encoded once
                    call_args += (*tenants[i].ids, b"%d" % counts[i][2])
                    order.append(i)
                calls.append((call_keys, call_args))
                # The first call adds the whole fold to the fleet-wide window.
                settings = (window, limit, hold, b"0", b"0")
        script = self.scripts.fold_trip_counts
        try:
            if len(calls) == 1:  # the common case: no pipeline to build
                keys_of_call, args_of_call = calls[0]
                replies = [run(self.client, script, len(keys_of_call), *keys_of_call, *args_of_call)]
            else:
                replies = run_pipelined(self.client, script, calls)
        except FAILURES as exc:
            raise wrap("fold_trip_counts", exc) from exc
        fleet = TripWindow(*(int(v) for v in replies[0][:3]))
        found: list[TripWindow] = []
        for reply in replies:
            values = [int(v) for v in reply[3:]]
            found += (TripWindow(*values[i : i + 4]) for i in range(0, len(values), 4))
        by_index = dict(zip(order, found, strict=False))
        return fleet, [by_index[i] for i in range(len(counts))]

    # Internals ------------------------------------------------------------------------------
    def _write(self, script: Script, numkeys: int, *keys_and_args: Any) -> Any:
        """Run a script that accepts entries; acknowledged by replicas if ``wait_replicas``."""
        if not self.wait_replicas:
            return run(self.client, script, numkeys, *keys_and_args)
        return run_acknowledged(
            self.client,
            script,
            numkeys,
            *keys_and_args,
            replicas=self.wait_replicas,
            timeout_ms=self.wait_timeout_ms,
        )

    def _encoded_trip_args(
        self, window_ms: int, threshold: int, hold_ms: int
    ) -> tuple[bytes, bytes, bytes, bytes]:
        """The window, threshold and hold ARGV and the entry TTL, as sent (cached: they rarely vary)."""
        return _trip_argv(window_ms, threshold, hold_ms, self.ttl_ms)
