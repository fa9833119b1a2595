"""The Redis buffer: the send side and the operator's side in :class:`MollifierBuffer`, the
drainers' side in :mod:`.drain_protocol`, keys in :mod:`.keys`, Lua in ``lua/``.
"""

from __future__ import annotations

from .core import DEFAULT_LEASE_MS
from .store import DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_SOCKET_TIMEOUT_MS, MollifierBuffer

__all__ = ["DEFAULT_CONNECT_TIMEOUT_MS", "DEFAULT_LEASE_MS", "DEFAULT_SOCKET_TIMEOUT_MS", "MollifierBuffer"]
