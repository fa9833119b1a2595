"""An app whose import raises something other than ImportError, as a broken deploy would."""

from __future__ import annotations

raise RuntimeError("the app's settings module is missing DATABASE_URL")
