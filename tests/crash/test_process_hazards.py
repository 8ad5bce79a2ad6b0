"""F11 and F16 (RELIABILITY.md sections 2.5, 2.6, 4.2): fork after open, and mqstore never
opening its own database files with open() (which would drop SQLite's POSIX locks)."""

from __future__ import annotations

import builtins
import io
import os
from pathlib import Path
from typing import Any

import pytest

from .harness import Child, assert_intact, children, connect

pytestmark = pytest.mark.crash


@pytest.mark.timeout(60)
def test_fork_after_open__child_gets_used_after_fork_error_and_parent_keeps_working(
    crash_db: str,
) -> None:
    # The fork happens in a child process, not in pytest's: this process runs mqstore's
    # threads and test machinery that a fork() would copy in an arbitrary state.
    # Given a process with an open connection that published "before-fork"
    with children() as started:
        process = Child("fork", crash_db, "--queue", "forkq", name="forker")
        started.append(process)

        # When it forks: the forked child uses the inherited connection (exit status 10 means
        # UsedAfterForkError), a second forked child opens a new connection (20 means it
        # published), and the parent publishes "after-fork" and drains the queue
        inherited = process.wait_for("inherited")
        fresh = process.wait_for("new")
        parent = process.wait_for("parent")
        process.finish()

    # Then the inherited connection was refused, the new one worked, the parent too, and the
    # refused publish left nothing behind
    assert inherited["rc"] == "10", process.describe()
    assert fresh["rc"] == "20", process.describe()
    assert sorted(parent["bodies"].split(",")) == ["after-fork", "before-fork", "from-child-new"]
    assert_intact(crash_db)


DB_SUFFIXES = (".db", "-wal", "-shm", "-journal")


@pytest.mark.timeout(30)
def test_mqstore_never_opens_its_database_files_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given open() and os.open() that record every database file they are asked to open
    opened: list[str] = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def record(path: Any) -> None:
        name = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else ""
        if name.endswith(DB_SUFFIXES):
            opened.append(name)

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        record(file)
        return real_open(file, *args, **kwargs)

    def spy_io_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        record(file)
        return real_io_open(file, *args, **kwargs)

    def spy_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        record(path)
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_io_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    # (the spies work: probe files no connection uses)
    open(tmp_path / "probe.db", "wb").close()
    os.close(os.open(tmp_path / "probe-wal", os.O_CREAT | os.O_WRONLY))
    assert [Path(p).name for p in opened] == ["probe.db", "probe-wal"]
    opened.clear()

    # When a broker is created (migrations included), published to, consumed, acked, nacked,
    # and closed
    path = tmp_path / "broker.db"
    with connect(path) as conn:
        channel = conn.channel()
        channel.queue_declare("q", durable=True)
        channel.exchange_declare("x", "fanout")
        channel.queue_bind("q", "x")
        for i in range(20):
            channel.basic_publish("x", "", f"m-{i}".encode())
        received: list[bytes] = []

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            received.append(body)
            if len(received) % 5 == 0:
                ch.basic_nack(method.delivery_tag, requeue=False)
            else:
                ch.basic_ack(method.delivery_tag)
            if len(received) == 20:
                ch.stop_consuming()

        channel.basic_qos(prefetch_count=3)
        channel.basic_consume("q", on_message)
        channel.start_consuming()
        channel.basic_publish("", "q", b"last")
        method, _, _ = channel.basic_get("q")
        assert method is not None
        channel.basic_reject(method.delivery_tag, requeue=True)
    monkeypatch.undo()

    # Then only SQLite itself opened them: no Python-level open() of .db, -wal or -shm
    assert len(received) == 20
    assert opened == []
    assert_intact(path)
