"""F19: a message routed to several queues is stored in all of them or in none.

A trigger added to the file makes SQLite fail the insert of the second queue's entry (the
fault RabbitMQ PR #1893 was about: a publish half-routed). The publisher must get an error
(a nack over AMQP), and no queue, nor the shared message table, may keep a copy. Once the
fault is gone the same publish reaches all three.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import mqstore

from .harness import assert_intact, connect, stored_messages, table_count

QUEUES = ("q1", "q2", "q3")


def _fanout(path: Path) -> None:
    with connect(path) as conn:
        channel = conn.channel()
        channel.exchange_declare("fan", "fanout")
        for name in QUEUES:
            channel.queue_declare(name, durable=True)
            channel.queue_bind(name, "fan")


def _change_schema(path: Path, statement: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _inject_fault(path: Path, queue: str) -> None:
    _change_schema(
        path,
        "CREATE TRIGGER injected_fault BEFORE INSERT ON mq_entries "
        f"WHEN NEW.queue_id = (SELECT id FROM mq_queues WHERE name = '{queue}') "
        "BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    )


def _shared_messages(path: Path) -> int:
    return table_count(path, "SELECT count(*) FROM mq_messages")


@pytest.mark.timeout(60)
def test_fault_on_the_second_queue_stores_the_message_nowhere(tmp_path: Path) -> None:
    # Given a fanout exchange bound to three queues, and a fault on the second one's insert
    path = tmp_path / "broker.db"
    _fanout(path)
    _inject_fault(path, "q2")

    # When a message is published to it
    with connect(path) as conn:
        channel = conn.channel()
        with pytest.raises(mqstore.StoreError) as excinfo:
            channel.basic_publish("fan", "", b"half-routed?")
    print(f"FIGURE F19: publisher got {type(excinfo.value).__name__}: {excinfo.value}")
    assert "injected fault" in str(excinfo.value)

    # Then no queue holds it, and no shared copy is left behind
    assert stored_messages(path) == []
    assert _shared_messages(path) == 0
    assert_intact(path)

    # And without the fault the same publish reaches all three queues, once each
    _change_schema(path, "DROP TRIGGER injected_fault")
    with connect(path) as conn:
        conn.channel().basic_publish("fan", "", b"routed")
    assert sorted(stored_messages(path)) == [("routed", name) for name in QUEUES]


@pytest.mark.timeout(60)
def test_concurrent_publishes_are_unharmed_by_one_failing(tmp_path: Path) -> None:
    """Group commit: the failing publish is replayed alone and fails alone."""
    import threading

    path = tmp_path / "broker.db"
    _fanout(path)
    with connect(path) as conn:
        conn.channel().queue_declare("plain", durable=True)
    _inject_fault(path, "q2")

    outcomes: dict[str, str] = {}
    with connect(path) as conn:
        start = threading.Barrier(9)

        def publish(name: str, exchange: str, key: str) -> None:
            channel = conn.channel()
            start.wait()
            try:
                channel.basic_publish(exchange, key, name.encode())
                outcomes[name] = "ok"
            except mqstore.StoreError:
                outcomes[name] = "error"

        threads = [threading.Thread(target=publish, args=("fanout", "fan", ""))]
        threads += [
            threading.Thread(target=publish, args=(f"plain-{i}", "", "plain")) for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert outcomes["fanout"] == "error"
    assert all(outcomes[f"plain-{i}"] == "ok" for i in range(8)), outcomes
    stored = stored_messages(path)
    assert sorted(body for body, queue in stored) == sorted(f"plain-{i}" for i in range(8))
    assert {queue for _, queue in stored} == {"plain"}
    assert _shared_messages(path) == 0
