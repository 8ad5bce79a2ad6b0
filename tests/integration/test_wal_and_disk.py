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
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"


def test_wal_is_checkpointed_back_under_its_threshold(db_path: str) -> None:
    # Given a WAL grown past the PASSIVE threshold by a burst of publishes
    connection = mqstore.BlockingConnection(
        mqstore.ConnectionParameters(path=db_path, durability="normal")
    )
    try:
        channel = connection.channel()
        channel.queue_declare("bulk")
        body = os.urandom(4096)
        for _ in range(2000):
            channel.basic_publish("", "bulk", body)
        checkpointer = connection._engine.checkpointer
        assert checkpointer.wal_bytes() > wal.PASSIVE_AT_BYTES
        # When the checkpointer runs (as its upkeep thread does every tick)
        result = connection._engine.checkpoint()
        # Then every WAL frame was copied back and the next writes reuse the WAL from start
        assert result is not None and result[0] == 0 and result[1] == result[2]
        channel.basic_publish("", "bulk", b"after")
        assert checkpointer.wal_bytes() <= wal.JOURNAL_SIZE_LIMIT
    finally:
        connection.close()
    check = sqlite3.connect(db_path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        check.close()


def test_connections_do_not_autocheckpoint(blocking_connect) -> None:
    connection = blocking_connect()
    value = connection._engine._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert value == 0
