"""The WAL stays bounded (one checkpointing process per file) and a nearly full disk refuses
publishes while acks keep working."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

import mqstore
from mqstore import wal


def test_publish_is_refused_below_the_disk_free_limit_and_acks_still_work(
    blocking_connect,
) -> None:
    # Given a message already queued and leased on a file system with room
    connection = blocking_connect()
    channel = connection.channel()
    channel.queue_declare("jobs")
    channel.basic_publish("", "jobs", b"queued before the disk filled")
    method, _, _ = channel.basic_get("jobs")

    # When free space falls below the limit (a limit above the free space simulates it)
    connection._engine.disk.limit_bytes = 2**62
    connection._engine.disk._checked_at = -1e9

    # Then publishes are refused with a clear error, nothing is stored, the channel is open
    with pytest.raises(mqstore.StoreFullError, match="free disk space is below the limit"):
        channel.basic_publish("", "jobs", b"refused")
    assert channel.is_open
    # And acks still work, so consumers can drain
    channel.basic_ack(method.delivery_tag)
    assert channel.queue_declare("jobs", passive=True).method.message_count == 0


def test_publishes_resume_when_space_returns(blocking_connect) -> None:
    connection = blocking_connect()
    channel = connection.channel()
    channel.queue_declare("jobs")
    guard = connection._engine.disk
    guard.limit_bytes, guard._checked_at = 2**62, -1e9
    with pytest.raises(mqstore.StoreFullError):
        channel.basic_publish("", "jobs", b"x")
    guard.limit_bytes, guard._checked_at = 1, -1e9
    channel.basic_publish("", "jobs", b"x")
    assert channel.queue_declare("jobs", passive=True).method.message_count == 1


def test_disk_guard_reads_free_space_of_the_database_directory(tmp_path) -> None:
    guard = wal.DiskGuard(str(tmp_path / "x.db"), limit_bytes=1)
    st = os.statvfs(tmp_path)
    assert abs(guard.free_bytes() - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    assert not guard.low()
    assert not wal.DiskGuard(str(tmp_path / "x.db"), limit_bytes=0).low()


def test_only_one_process_checkpoints_a_file(db_path: str) -> None:
    connection = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db_path))
    try:
        assert connection._engine.checkpointer.try_lead()
        # A second process cannot take the checkpointer lock while this one lives.
        probe = textwrap.dedent(
            f"""
            from mqstore import wal
            print(wal.Checkpointer({db_path!r}).try_lead())
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "False"
    finally:
        connection.close()
    # Once it is gone, another process can lead.
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_wal_stays_bounded_under_steady_publishing(db_path: str) -> None:
    connection = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db_path))
    try:
        channel = connection.channel()
        channel.queue_declare("bulk")
        body = os.urandom(1024)
        for _ in range(3000):  # about 12 MiB of WAL frames without checkpoints
            channel.basic_publish("", "bulk", body)
        assert connection._engine.checkpointer.wal_bytes() <= wal.JOURNAL_SIZE_LIMIT
    finally:
        connection.close()


def test_wal_pinned_by_a_reader_is_checkpointed_once_the_reader_ends(db_path: str) -> None:
    # Given a reader that pins the WAL while publishes grow it past the threshold
    connection = mqstore.BlockingConnection(
        mqstore.ConnectionParameters(path=db_path, durability="normal")
    )
    reader = sqlite3.connect(db_path, isolation_level=None)
    try:
        channel = connection.channel()
        channel.queue_declare("bulk")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM mq_queues").fetchone()
        body = os.urandom(4096)
        for _ in range(2000):
            channel.basic_publish("", "bulk", body)
        checkpointer = connection._engine.checkpointer
        assert checkpointer.wal_bytes() > wal.PASSIVE_AT_BYTES
        # When the reader ends and the checkpointer's upkeep runs
        reader.execute("COMMIT")
        result = connection._engine.checkpoint()
        # Then every WAL frame was copied back and the WAL restarts, truncated to the limit
        assert result is not None and result[0] == 0 and result[1] == result[2]
        channel.basic_publish("", "bulk", b"after")
        assert checkpointer.wal_bytes() <= wal.JOURNAL_SIZE_LIMIT
    finally:
        reader.close()
        connection.close()
    check = sqlite3.connect(db_path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        check.close()


def test_only_the_checkpointer_connection_autocheckpoints(db_path: str) -> None:
    # Given two processes' worth of connections: a publisher in this process
    publisher = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db_path))
    try:
        channel = publisher.channel()
        channel.queue_declare("q")
        channel.basic_publish("", "q", b"x")  # a durable publish takes the free role
        engine = publisher._engine
        assert engine.checkpointer.is_leader
        autocheckpoint = engine._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert autocheckpoint == wal.AUTOCHECKPOINT_PAGES
        # And another process, which cannot lead while this one does, keeps it off
        probe = textwrap.dedent(
            f"""
            import mqstore
            c = mqstore.BlockingConnection(mqstore.ConnectionParameters(path={db_path!r}))
            ch = c.channel()
            ch.basic_publish("", "q", b"y")
            e = c._engine
            print(e.checkpointer.is_leader,
                  e._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
            c.close()
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["False", "0"]
    finally:
        publisher.close()


def test_new_files_give_a_drained_queues_pages_back(db_path: str) -> None:
    # Given a large queue published and then drained
    connection = mqstore.BlockingConnection(
        mqstore.ConnectionParameters(path=db_path, durability="normal")
    )
    try:
        engine = connection._engine
        assert engine._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        channel = connection.channel()
        channel.queue_declare("big")
        body = os.urandom(8192)
        for _ in range(2000):
            channel.basic_publish("", "big", body)
        channel.queue_purge("big")
        engine.checkpointer.try_lead()
        free_before = engine._conn.execute("PRAGMA freelist_count").fetchone()[0]
        assert free_before >= wal.VACUUM_AT_FREE_PAGES
        # When the checkpointer's upkeep runs a few times
        for _ in range(10):
            engine.checkpoint()
        # Then the free pages were handed back (the file no longer holds them)
        free_after = engine._conn.execute("PRAGMA freelist_count").fetchone()[0]
        assert free_after < wal.VACUUM_AT_FREE_PAGES
    finally:
        connection.close()
