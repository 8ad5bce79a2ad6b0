"""Keeping the WAL bounded, and the disk from filling, for every process on one file.

Checkpoints: one process per file at a time checkpoints: whoever holds an ``flock`` on
``<db>-mqstore.lock`` (a separate file, so no SQLite lock is ever touched). Its connection
keeps SQLite's automatic PASSIVE checkpoint after commits (every ``AUTOCHECKPOINT_PAGES``),
so the WAL is reused from its start instead of growing (a growing WAL makes every fsync also
commit file-system metadata); every other connection has it off. A writing process takes the
role when it is free, and an idle leader gives it up, so the role follows the writes. Past
``TRUNCATE_AT_BYTES`` (readers pinned the WAL) the leader's upkeep runs TRUNCATE.

SQLite's WAL-reset bug (3.7.0 to 3.51.2) needs two checkpoints back to back while another
connection restarts the WAL; one checkpointer that checkpoints only after its own commits
narrows that window. Run on a Python whose SQLite is 3.51.3 or later to remove it.

Disk space: below ``disk_free_limit`` bytes free, publishes are refused before SQLite meets
ENOSPC, so acks and deletes (which also need WAL space) keep working and consumers can drain.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time

log = logging.getLogger(__name__)

AUTOCHECKPOINT_PAGES = 1000  # SQLite's default: about 4 MiB of WAL
PASSIVE_AT_BYTES = 4 * 1024 * 1024
IDLE_RELEASE_S = 5.0
VACUUM_AT_FREE_PAGES = 1024  # 4 MiB of free pages
VACUUM_PAGES_PER_TICK = 2048
# After a checkpoint the WAL restarts from its beginning and is truncated to this size.
JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024
TRUNCATE_AT_BYTES = 64 * 1024 * 1024
DEFAULT_DISK_FREE_LIMIT = 50 * 1024 * 1024  # RabbitMQ's default disk_free_limit
WAL_RESET_FIXED = (3, 51, 3)

_warned_wal_reset = False


def warn_if_wal_reset_bug() -> None:
    """Log once per process when this SQLite has the WAL-reset bug."""
    global _warned_wal_reset
    if _warned_wal_reset or sqlite3.sqlite_version_info >= WAL_RESET_FIXED:
        return
    _warned_wal_reset = True
    log.warning(
        "SQLite %s has the WAL-reset bug fixed in 3.51.3; mqstore narrows the exposure with "
        "one checkpointing process per file. Use a Python built with SQLite >= 3.51.3 to "
        "remove it (see the README).",
        sqlite3.sqlite_version,
        extra={"action": "sqlite_wal_reset_bug"},
    )


class Checkpointer:
    """Decides whether this process checkpoints the file, and does it when the WAL grows."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.wal_path = db_path + "-wal"
        self._lock_path = db_path + "-mqstore.lock"
        self._fd: int | None = None
        self._last_try = -1e9
        self._last_write = -1e9
        self.last_result: tuple[int, int, int] | None = None

    @property
    def is_leader(self) -> bool:
        return self._fd is not None

    def try_lead(self) -> bool:
        """Become this file's checkpointer if no live process is (the kernel frees the lock
        when its holder dies)."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        self._last_write = time.monotonic()  # leading starts the idle clock
        return True

    def wal_bytes(self) -> int:
        try:
            return os.stat(self.wal_path).st_size
        except FileNotFoundError:
            return 0

    def follow_writes(self, conn: sqlite3.Connection, *, wrote: bool, now: float) -> None:
        """After a commit (``wrote``) take the role if it is free; when idle for
        ``IDLE_RELEASE_S`` give it up. Runs between transactions on ``conn``."""
        if wrote:
            self._last_write = now
            if self._fd is None and now - self._last_try >= 0.1:
                self._last_try = now
                if self.try_lead():
                    conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        elif self._fd is not None and now - self._last_write >= IDLE_RELEASE_S:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self.close()

    def maybe_checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int, int] | None:
        """As leader, checkpoint a WAL that grew past a threshold anyway; runs outside any
        transaction."""
        if self._fd is None:
            return None
        size = self.wal_bytes()
        if size < PASSIVE_AT_BYTES:
            return None
        mode = "TRUNCATE" if size >= TRUNCATE_AT_BYTES else "PASSIVE"
        row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        self.last_result = (int(row[0]), int(row[1]), int(row[2]))
        if row[0]:
            log.warning(
                "WAL checkpoint (%s) was blocked; WAL is %d bytes",
                mode,
                size,
                extra={"action": "checkpoint_busy"},
            )
        return self.last_result

    def maybe_vacuum(self, conn: sqlite3.Connection) -> int:
        """As leader, give free pages back to the file system a slice at a time (files
        created with auto_vacuum=INCREMENTAL); returns the pages freed."""
        if self._fd is None:
            return 0
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free < VACUUM_AT_FREE_PAGES:
            return 0
        pages = min(free, VACUUM_PAGES_PER_TICK)
        # Each step of the statement frees one page: executescript steps it to the end.
        try:
            conn.executescript(f"PRAGMA incremental_vacuum({pages});")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                return 0  # another process is writing: the next round frees them
            raise
        return int(pages)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases the flock
            self._fd = None


class DiskGuard:
    """Whether the file system holding the database has room for more publishes."""

    # Re-read often: free space read once a second let a fast publisher (64 KiB bodies on a
    # tmpfs) write past a 50 MiB limit into ENOSPC before the next read; statvfs costs ~1 us.
    def __init__(self, db_path: str, limit_bytes: int, recheck_s: float = 0.01) -> None:
        self.directory = os.path.dirname(os.path.abspath(db_path))
        self.limit_bytes = limit_bytes
        self._recheck_s = recheck_s
        self._checked_at = -1e9
        self._free = 0

    def free_bytes(self) -> int:
        now = time.monotonic()
        if now - self._checked_at >= self._recheck_s:
            st = os.statvfs(self.directory)
            self._free = st.f_bavail * st.f_frsize
            self._checked_at = now
        return self._free

    def low(self) -> bool:
        return self.limit_bytes > 0 and self.free_bytes() < self.limit_bytes
