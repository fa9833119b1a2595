"""A web dashboard for operators: the buffer, every tenant, the dead letters, and actions on them.

Install with ``pip install -e '.[dashboard]'`` in a checkout. Serve it alone with
``dramatiq-mollifier dashboard`` (see :mod:`.serve`), or mount :func:`create_app` (WSGI) or
:func:`create_asgi_app` (ASGI) in your own application. The library never imports this package.
"""

from __future__ import annotations

from .app import create_app, create_asgi_app
from .security import Protection, is_loopback
from .serve import serve

__all__ = ["Protection", "create_app", "create_asgi_app", "is_loopback", "serve"]
