"""Noticing that the database file was deleted or replaced while it is open.

A process that keeps writing to an unlinked (or renamed-over) file writes into an orphan
nobody will read, while other processes open a fresh file under the name: the engine checks
before every durable commit and refuses publishes from then on (StoreReplacedError). The
check compares the path's (st_dev, st_ino) with the file opened.

A ``stat`` of the path costs 2-6 us on these machines, a tenth of a sequential durable
publish's own work. On Linux an inotify watch on the file and its directory makes the
common case one ``poll(0)`` (~0.6 us): the kernel queues an event before ``unlink`` or
``rename`` returns, so a check after them always sees it, and any event falls back to the
``stat``. The inotify descriptor carries no POSIX lock, so closing it cannot drop SQLite's
locks (RELIABILITY.md: no ``open()`` of the database file itself). Where inotify is missing
or its instances are used up, every check is a ``stat``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import sys

_IN_ATTRIB = 0x004  # the file's link count changed (unlinked, or renamed over)
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_FILE_EVENTS = _IN_ATTRIB | _IN_DELETE_SELF | _IN_MOVE_SELF
_DIRECTORY_EVENTS = _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_MOVE_SELF


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018 - present in this libc?
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def _inotify(path: str) -> int | None:
    """An inotify descriptor watching ``path`` and its directory, or None."""
    if _LIBC is None:
        return None
    fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        return None  # EMFILE: max_user_instances reached
    directory = os.path.dirname(os.path.abspath(path))
    if (
        _LIBC.inotify_add_watch(fd, os.fsencode(path), _FILE_EVENTS) < 0
        or _LIBC.inotify_add_watch(fd, os.fsencode(directory), _DIRECTORY_EVENTS) < 0
    ):
        os.close(fd)
        return None
    return fd


class ReplacedCheck:
    """Whether the file at ``path`` is still the one that was opened."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Watch first, then stat: a change between the two is seen by the next check.
        self._fd = _inotify(path)
        self._poll: select.poll | None = None
        if self._fd is not None:
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)
        self.replaced = False

    def check(self) -> bool:
        """True once the path names another file, or none."""
        if self.replaced:
            return True
        if self._poll is not None:
            if not self._poll.poll(0):
                return False  # no event: neither the file nor its directory entry changed
            self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.replaced = True
        else:
            self.replaced = (st.st_dev, st.st_ino) != self._identity
        return self.replaced

    def _drain(self) -> None:
        assert self._fd is not None
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._poll = None
