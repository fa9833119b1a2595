"""The tenant of a message, by default from its ``org_id`` and ``env_id`` options.

:class:`OptionTenants` is the default resolver, on every send's path: it reads the two options
and hands out one :class:`~dramatiq_mollifier.Tenant` per (org, env) pair of strings, built once
and kept (up to :data:`MAX_CACHED` pairs; the cache starts over when full). Integer ids are
accepted and turned into strings, uncached; anything else is :data:`INVALID` (the gate fails open
and says so). :func:`checked` vets what a custom resolver returned (integer ids and a missing env
are read there as here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models import DEFAULT_ENV_ID, Tenant

__all__ = ["INVALID", "MAX_CACHED", "OptionTenants", "checked"]

#: The (org, env) pairs whose Tenant the default resolver keeps.
MAX_CACHED = 10_000

#: The options name a tenant of a type that is neither str nor int.
INVALID: Any = object()


class OptionTenants:
    """``org_id`` and ``env_id`` options -> Tenant (env ``default`` when absent or empty); None
    without an org; :data:`INVALID` for ids that are neither str nor int."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[str, Any], Tenant] = {}

    @property
    def cache(self) -> Mapping[tuple[Any, Any], Tenant]:
        """The (``org_id``, ``env_id``) option values -> Tenant pairs built so far (the gate reads
        it first on every send: a hit is what :meth:`of` would return)."""
        return self._cache

    def of(self, options: Mapping[str, Any]) -> Tenant | None:
        org_id = options.get("org_id")
        env_id = options.get("env_id")
        if type(org_id) is str and (env_id is None or type(env_id) is str):
            key = (org_id, env_id)
            tenant = self._cache.get(key)
            if tenant is not None:
                return tenant
            if org_id == "":
                return None
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            tenant = self._cache[key] = Tenant(org_id, env_id or DEFAULT_ENV_ID)
            return tenant
        if org_id is None or org_id == "":
            return None
        if env_id is None or env_id == "":
            env_id = DEFAULT_ENV_ID
        if type(org_id) in (str, int) and type(env_id) in (str, int):
            return Tenant(str(org_id), str(env_id))
        return INVALID  # type: ignore[no-any-return]


def checked(tenant: object) -> Tenant | None:
    """A custom resolver's answer (other than None) as a usable Tenant; None if it is not one.

    Integer ids become strings, as in the options: ``Tenant(42, "prod")`` is org ``"42"``. An env
    of None or ``""`` is the default env, as for the options (``Tenant(org, None)`` is what a
    resolver reading an optional env writes): the fold's keys are built from it, and one None
    among a fold's envs made every fold of the process fail.
    """
    if not isinstance(tenant, Tenant):
        return None
    org_id: object = tenant.org_id
    env_id: object = tenant.env_id
    if type(org_id) is int:
        org_id = str(org_id)
    if env_id is None or env_id == "":
        env_id = DEFAULT_ENV_ID
    elif type(env_id) is int:
        env_id = str(env_id)
    if type(org_id) is not str or not org_id or type(env_id) is not str:
        return None
    if org_id is tenant.org_id and env_id is tenant.env_id:
        return tenant
    return Tenant(org_id, env_id)
