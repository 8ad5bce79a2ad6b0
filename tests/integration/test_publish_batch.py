"""basic_publish_batch: many bodies, one exchange/routing key/properties, one store
transaction; all stored in order, or none."""

from __future__ import annotations

import sqlite3

import pytest

import mqstore
from mqstore import BasicProperties

from .helpers import drain


@pytest.fixture
def channel(blocking_connect) -> mqstore.BlockingChannel:
    return blocking_connect().channel()


@pytest.mark.parametrize("count", [1, 3, 100, 203])
def test_every_body_is_stored_in_order(channel, count: int) -> None:
    """Sizes that are not a power of two are stored in several chunk statements."""
    channel.queue_declare("jobs")
    bodies = [f"job-{i}".encode() for i in range(count)]
    channel.basic_publish_batch("", "jobs", bodies)
    assert channel.queue_declare("jobs", passive=True).method.message_count == count
    assert drain(channel, "jobs") == bodies


def test_properties_and_str_bodies_come_back_exactly(channel) -> None:
    channel.queue_declare("q")
    props = BasicProperties(
        content_type="application/json", headers={"n": 1, "tags": ["a", "b"]}, priority=3
    )
    channel.basic_publish_batch("", "q", ["é1", b"two"], props)
    got = []
    for _ in range(2):
        method, properties, body = channel.basic_get("q", auto_ack=True)
        got.append((body, properties.content_type, properties.headers, method.routing_key))
    assert got == [
        ("é1".encode(), "application/json", {"n": 1, "tags": ["a", "b"]}, "q"),
        (b"two", "application/json", {"n": 1, "tags": ["a", "b"]}, "q"),
    ]


def test_single_queue_batch_is_one_row_per_message(channel, db_path: str) -> None:
    channel.queue_declare("q")
    channel.basic_publish_batch("", "q", [b"a", b"b", b"c"])
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*) FROM mq_entries").fetchone() == (3,)
        assert db.execute("SELECT count(*) FROM mq_messages").fetchone() == (0,)


def test_fanout_batch_reaches_every_queue_in_order(channel) -> None:
    channel.exchange_declare("fan", "fanout")
    for name in ("a", "b"):
        channel.queue_declare(name)
        channel.queue_bind(name, "fan")
    channel.basic_publish_batch("fan", "", [b"1", b"2", b"3"])
    assert drain(channel, "a") == [b"1", b"2", b"3"]
    assert drain(channel, "b") == [b"1", b"2", b"3"]


def test_queue_with_ttl_takes_the_general_path_and_keeps_the_ttl(channel) -> None:
    channel.queue_declare("ttl", arguments={"x-message-ttl": 60_000})
    channel.basic_publish_batch("", "ttl", [b"x", b"y"])
    assert drain(channel, "ttl") == [b"x", b"y"]


def test_empty_batch_stores_nothing(channel) -> None:
    channel.queue_declare("q")
    channel.basic_publish_batch("", "q", [])
    assert channel.queue_declare("q", passive=True).method.message_count == 0


def test_mandatory_unroutable_batch_is_returned_whole(channel) -> None:
    returned = []
    channel.add_on_return_callback(lambda ch, method, props, body: returned.append(body))
    with pytest.raises(mqstore.UnroutableError) as info:
        channel.basic_publish_batch("", "nobody", [b"a", b"b"], mandatory=True)
    assert [m.body for m in info.value.messages] == [b"a", b"b"]
    assert returned == [b"a", b"b"]
    assert channel.is_open  # as for basic_publish: the channel stays open


def test_full_queue_refusing_one_stores_none_of_the_batch(channel) -> None:
    args = {"x-max-length": 2, "x-overflow": "reject-publish"}
    channel.queue_declare("small", arguments=args)
    channel.basic_publish("", "small", b"old")
    with pytest.raises(mqstore.NackError) as info:
        channel.basic_publish_batch("", "small", [b"fits", b"refused"])
    assert "none of the batch's 2 messages was stored" in str(info.value)
    assert drain(channel, "small") == [b"old"]


def test_batch_inside_a_transaction_joins_it(channel) -> None:
    channel.queue_declare("q")
    with pytest.raises(RuntimeError), channel.transaction():
        channel.basic_publish_batch("", "q", [b"a", b"b"])
        raise RuntimeError("roll back")
    assert channel.queue_declare("q", passive=True).method.message_count == 0
    with channel.transaction():
        channel.basic_publish_batch("", "q", [b"a", b"b"])
    assert drain(channel, "q") == [b"a", b"b"]


def test_bad_body_is_a_type_error_and_nothing_is_stored(channel) -> None:
    channel.queue_declare("q")
    with pytest.raises(TypeError, match="body"):
        channel.basic_publish_batch("", "q", [b"ok", 42])
    assert channel.queue_declare("q", passive=True).method.message_count == 0


def test_missing_exchange_is_404_and_closes_the_channel(channel) -> None:
    with pytest.raises(mqstore.ChannelClosedByBroker) as info:
        channel.basic_publish_batch("nope", "k", [b"a"])
    assert info.value.reply_code == 404
    assert not channel.is_open


def test_oversized_body_is_refused_before_anything_is_stored(blocking_connect) -> None:
    channel = blocking_connect(max_message_size=10).channel()
    channel.queue_declare("q")
    with pytest.raises(mqstore.MessageTooLargeError):
        channel.basic_publish_batch("", "q", [b"small", b"x" * 11])
    check = blocking_connect().channel()
    assert check.queue_declare("q", passive=True).method.message_count == 0


async def test_asyncio_batch(db_path: str) -> None:
    connection = await mqstore.aio.connect(db_path)
    try:
        channel = await connection.channel()
        await channel.queue_declare("q")
        await channel.basic_publish_batch("", "q", [b"1", b"2", b"3"])
        got = []
        for _ in range(3):
            _method, _props, body = await channel.basic_get("q", auto_ack=True)
            got.append(body)
        assert got == [b"1", b"2", b"3"]
        with pytest.raises(mqstore.UnroutableError):
            await channel.basic_publish_batch("", "missing", [b"x"], mandatory=True)
    finally:
        await connection.close()


def test_transaction_of_many_single_queue_publishes_keeps_order(channel) -> None:
    """publish_many stores a run of plain publishes in multi-row chunks (128, 64, ... 1)."""
    channel.queue_declare("q")
    bodies = [f"m{i}".encode() for i in range(203)]
    with channel.transaction():
        for body in bodies:
            channel.basic_publish("", "q", body)
    assert drain(channel, "q") == bodies


def test_transaction_mixing_single_queue_and_fanout_publishes_keeps_order(channel) -> None:
    """Inline (one queue) and shared (several queues) messages in one run: queue order is
    publish order."""
    channel.exchange_declare("fan", "fanout")
    for name in ("q", "other"):
        channel.queue_declare(name)
        channel.queue_bind(name, "fan")
    with channel.transaction():
        channel.basic_publish("", "q", b"1")
        channel.basic_publish("fan", "", b"2")
        channel.basic_publish("", "q", b"3")
        channel.basic_publish("fan", "", b"4")
    assert drain(channel, "q") == [b"1", b"2", b"3", b"4"]
    assert drain(channel, "other") == [b"2", b"4"]
