"""Whether this process is a fork of the one that set a mark, without a system call per check.

The local trip evaluator checks this on every send: a forked child must not reuse its parent's
counts, locks or thread, and forking servers such as uwsgi fork at the C level, where Python's
fork hooks do not run, so the check cannot rely on them. ``os.getpid()`` is a system call (about
1 µs in a hot loop on a virtual machine, several µs between two broker round trips). On Linux
(4.14 and later) :class:`ForkMark` keeps a byte in a page advised ``MADV_WIPEONFORK``: the
kernel hands every child of any fork a zeroed copy of that page, so reading the byte tells. Where
the advice is not available it compares the process id, as before.
"""

from __future__ import annotations

import mmap
import os

__all__ = ["ForkMark"]

#: ``madvise`` advice (Linux >= 4.14): the page reads as zeros in a forked child.
MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)


def _wipe_on_fork_page() -> mmap.mmap | None:
    """A private page holding 1 that a forked child sees as 0; None where that is not possible."""
    if not hasattr(mmap.mmap, "madvise") or not hasattr(mmap, "MAP_PRIVATE"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, AttributeError):
        return None
    try:
        page.madvise(MADV_WIPEONFORK)
    except (OSError, ValueError):  # an older kernel, or not Linux
        page.close()
        return None
    page[0] = 1
    return page


class ForkMark:
    """Made in one process; :meth:`forked` says whether the caller is now in a forked child."""

    __slots__ = ("_page", "_pid")

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._page = _wipe_on_fork_page()

    @property
    def page(self) -> mmap.mmap | None:
        """The page (its first byte is 0 in a forked child), for a caller that reads it inline;
        None where the process id is compared instead."""
        return self._page

    @property
    def wipes_on_fork(self) -> bool:
        """Whether the check reads the page (no system call) rather than the process id."""
        return self._page is not None

    def forked(self) -> bool:
        """Whether this process is not the one that made the mark (any fork, C-level included)."""
        page = self._page
        if page is not None:
            return page[0] == 0
        return os.getpid() != self._pid
