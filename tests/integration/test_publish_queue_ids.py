"""The default exchange's plain publish remembers queue ids (store.publish_alone): a hint
that must never send a message to the wrong queue or skip a queue's arguments, whatever
happened to the queue since, in this process or another."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

import mqstore


def queue_id(path: str, name: str) -> int | None:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT id FROM mq_queues WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def in_another_process(path: str, code: str) -> None:
    script = (
        "import mqstore\n"
        + textwrap.dedent(f"""
        conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path={path!r}))
        ch = conn.channel()
    """)
        + textwrap.dedent(code)
        + "\nconn.close()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def count(channel: mqstore.BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def test_queue_redeclared_with_a_length_limit_gets_it(blocking_connect, db_path) -> None:
    channel = blocking_connect().channel()
    channel.queue_declare("jobs")
    channel.basic_publish("", "jobs", b"remembered")  # the id is now remembered
    channel.queue_delete("jobs")
    channel.queue_declare("jobs", arguments={"x-max-length": 1})
    for body in (b"a", b"b", b"c"):
        channel.basic_publish("", "jobs", body)
    assert count(channel, "jobs") == 1
    assert channel.basic_get("jobs", auto_ack=True)[2] == b"c"


def test_deleted_queue_whose_id_went_to_another_is_unroutable(blocking_connect, db_path) -> None:
    channel = blocking_connect().channel()
    channel.queue_declare("old")
    channel.basic_publish("", "old", b"remembered")
    old_id = queue_id(db_path, "old")
    channel.queue_delete("old")
    channel.queue_declare("new")
    assert queue_id(db_path, "new") == old_id  # SQLite gave the id out again

    channel.confirm_delivery()
    with pytest.raises(mqstore.UnroutableError):
        channel.basic_publish("", "old", b"lost?", mandatory=True)
    assert count(channel, "new") == 0


def test_another_process_replacing_the_queue(blocking_connect, db_path) -> None:
    channel = blocking_connect().channel()
    channel.queue_declare("q")
    channel.basic_publish("", "q", b"first")
    old_id = queue_id(db_path, "q")

    # Another process deletes q, gives its id to "other" and declares q again with a limit
    in_another_process(
        db_path,
        """
        ch.queue_delete("q")
        ch.queue_declare("other")
        ch.queue_declare("q", arguments={"x-max-length": 2})
        """,
    )
    assert queue_id(db_path, "other") == old_id

    for body in (b"1", b"2", b"3"):
        channel.basic_publish("", "q", body)
    assert count(channel, "other") == 0
    assert count(channel, "q") == 2
    assert channel.basic_get("q", auto_ack=True)[2] == b"2"


def test_many_queues_still_route_each_to_its_own(blocking_connect) -> None:
    """More queues than are remembered: the hint table is reset, nothing misroutes."""
    channel = blocking_connect().channel()
    names = [f"q{i}" for i in range(mqstore.store.QUEUE_IDS_CACHED + 10)]
    for name in names:
        channel.queue_declare(name)
        channel.basic_publish("", name, name.encode())
    for name in names[:5] + names[-5:]:
        assert channel.basic_get(name, auto_ack=True)[2] == name.encode()
        assert count(channel, name) == 0


def test_remembered_queue_keeps_properties_and_caps_priority(blocking_connect) -> None:
    """Once the id is remembered, a publish with properties takes the seven-value statement
    and a bare one the four-value statement: both store what they were given."""
    channel = blocking_connect().channel()
    channel.queue_declare("p", arguments={"x-max-priority": 5})
    channel.basic_publish("", "p", b"bare-1")
    props = mqstore.BasicProperties(priority=9, correlation_id="c-1", headers={"k": "v"})
    channel.basic_publish("", "p", b"urgent", props)
    channel.basic_publish("", "p", b"bare-2")

    _method, got, body = channel.basic_get("p", auto_ack=True)
    assert body == b"urgent"
    assert (got.priority, got.correlation_id, got.headers) == (9, "c-1", {"k": "v"})
    rest = [channel.basic_get("p", auto_ack=True) for _ in range(2)]
    assert [r[2] for r in rest] == [b"bare-1", b"bare-2"]
    assert all(r[1].priority is None and r[1].headers is None for r in rest)
