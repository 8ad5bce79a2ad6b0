"""The checkpointer's incremental vacuum is opportunistic: a busy file skips a round."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mqstore import wal


def _file_with_free_pages(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (b BLOB)")
    conn.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000) "
        "INSERT INTO t SELECT randomblob(4000) FROM c"
    )
    conn.execute("DELETE FROM t")
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] >= wal.VACUUM_AT_FREE_PAGES
    conn.close()


def test_vacuum_skips_a_round_while_another_connection_writes(tmp_path: Path) -> None:
    path = tmp_path / "free.db"
    _file_with_free_pages(path)
    checkpointer = wal.Checkpointer(str(path))
    assert checkpointer.try_lead()
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        assert checkpointer.maybe_vacuum(conn) == 0  # busy: no error, nothing freed
        writer.execute("ROLLBACK")
        freed = checkpointer.maybe_vacuum(conn)
        assert freed > 0
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] < wal.VACUUM_AT_FREE_PAGES
    finally:
        writer.close()
        conn.close()
        checkpointer.close()
