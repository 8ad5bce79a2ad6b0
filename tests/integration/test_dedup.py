"""x-deduplication-window: a queue drops a publish whose message_id it already accepted
within the window (silently, counted as ``deduplicated``)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

import mqstore
from mqstore import BasicProperties, errors
from mqstore.testing import Broker


def mid(value: str) -> BasicProperties:
    return BasicProperties(message_id=value)


def bodies(ch: Any, queue: str) -> list[bytes]:
    out = []
    while True:
        method, _, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def counters(db_path: str) -> dict[str, int]:
    conn = sqlite3.connect(db_path)
    try:
        return dict(conn.execute("SELECT name, value FROM mq_counters").fetchall())
    finally:
        conn.close()


@pytest.fixture
def connection(blocking_connect, fake_clock):
    return blocking_connect(clock=fake_clock)


def test_duplicate_within_window_is_dropped_silently(connection, db_path) -> None:
    ch = connection.channel()
    ch.queue_declare("q", arguments={"x-deduplication-window": 60})
    ch.basic_publish("", "q", b"first", mid("a"), mandatory=True)
    ch.basic_publish("", "q", b"again", mid("a"), mandatory=True)  # no error, no return
    ch.basic_publish("", "q", b"other", mid("b"))
    ch.basic_publish("", "q", b"no id")
    ch.basic_publish("", "q", b"no id")
    assert bodies(ch, "q") == [b"first", b"other", b"no id", b"no id"]
    assert counters(db_path)["deduplicated"] == 1
    # Consumed or not, the id is remembered for the window.
    ch.basic_publish("", "q", b"late", mid("a"))
    assert bodies(ch, "q") == []


def test_window_expires_and_upkeep_forgets(connection, fake_clock, db_path) -> None:
    ch = connection.channel()
    ch.queue_declare("q", arguments={"x-deduplication-window": 2})
    ch.basic_publish("", "q", b"1", mid("a"))
    fake_clock.advance(1_000)
    ch.basic_publish("", "q", b"2", mid("a"))
    fake_clock.advance(1_500)  # 2.5 s after the first: the window has passed
    ch.basic_publish("", "q", b"3", mid("a"))
    assert bodies(ch, "q") == [b"1", b"3"]
    fake_clock.advance(5_000)
    connection._engine.upkeep()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM mq_dedup").fetchone()[0] == 0
    finally:
        conn.close()


def test_per_queue_only_queues_with_a_window(connection) -> None:
    ch = connection.channel()
    ch.exchange_declare("fan", "fanout")
    ch.queue_declare("dedup", arguments={"x-deduplication-window": 60})
    ch.queue_declare("plain")
    ch.queue_bind("dedup", "fan")
    ch.queue_bind("plain", "fan")
    for _ in range(3):
        ch.basic_publish("fan", "", b"x", mid("same"))
    assert bodies(ch, "dedup") == [b"x"]
    assert bodies(ch, "plain") == [b"x", b"x", b"x"]


def test_deleting_the_queue_forgets_its_ids(connection) -> None:
    ch = connection.channel()
    ch.queue_declare("q", arguments={"x-deduplication-window": 60})
    ch.basic_publish("", "q", b"1", mid("a"))
    ch.queue_delete("q")
    ch.queue_declare("q", arguments={"x-deduplication-window": 60})
    ch.basic_publish("", "q", b"2", mid("a"))
    assert bodies(ch, "q") == [b"2"]


def test_refused_publish_is_not_remembered(connection) -> None:
    ch = connection.channel()
    args = {"x-deduplication-window": 60, "x-max-length": 1, "x-overflow": "reject-publish"}
    ch.queue_declare("q", arguments=args)
    ch.basic_publish("", "q", b"fills", mid("a"))
    with pytest.raises(errors.NackError):
        ch.basic_publish("", "q", b"refused", mid("b"))
    assert bodies(ch, "q") == [b"fills"]
    ch.basic_publish("", "q", b"retried", mid("b"))  # a retry is not a duplicate
    assert bodies(ch, "q") == [b"retried"]


def test_duplicates_inside_one_transaction(connection) -> None:
    ch = connection.channel()
    ch.queue_declare("q", arguments={"x-deduplication-window": 60})
    with ch.transaction():
        for i in range(5):
            ch.basic_publish("", "q", b"%d" % i, mid(f"k{i % 2}"))
    assert bodies(ch, "q") == [b"0", b"1"]


@pytest.mark.parametrize("value", [0, -1, "10", True])
def test_invalid_window_is_406(connection, value) -> None:
    ch = connection.channel()
    with pytest.raises(errors.PreconditionFailedError, match="x-deduplication-window"):
        ch.queue_declare("q", arguments={"x-deduplication-window": value})


def test_redeclare_with_another_window_is_406(connection) -> None:
    ch = connection.channel()
    ch.queue_declare("q", arguments={"x-deduplication-window": 60})
    ch.queue_declare("q", arguments={"x-deduplication-window": 60})
    with pytest.raises(errors.PreconditionFailedError, match="inequivalent"):
        ch.queue_declare("q", arguments={"x-deduplication-window": 30})


async def test_aio_dedup(db_path: str) -> None:
    connection = await mqstore.aio.connect(db_path)
    try:
        ch = await connection.channel()
        await ch.queue_declare("q", arguments={"x-deduplication-window": 60})
        for _ in range(3):
            await ch.basic_publish("", "q", b"x", mid("one"))
        assert (await ch.queue_declare("q", passive=True)).method.message_count == 1
    finally:
        await connection.close()


def test_testing_kit_counts_deduplicated(db_path: str, connection) -> None:
    ch = connection.channel()
    ch.queue_declare("q", arguments={"x-deduplication-window": 60})
    ch.basic_publish("", "q", b"x", mid("one"))
    ch.basic_publish("", "q", b"x", mid("one"))
    assert Broker(db_path).counters()["deduplicated"] == 1
