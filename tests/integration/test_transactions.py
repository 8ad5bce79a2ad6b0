"""Channel transactions (mqstore.txn) through the blocking and asyncio APIs: acks, nacks and
publishes of a ``with channel.transaction()`` block commit together in one store
transaction, or not at all."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

import mqstore
from mqstore import BasicProperties, errors

from .helpers import drain


def count(ch: Any, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


@pytest.fixture
def ch(blocking_connect):
    channel = blocking_connect().channel()
    channel.queue_declare("in")
    channel.queue_declare("out")
    return channel


def test_ack_and_publishes_commit_together(ch) -> None:
    ch.basic_publish("", "in", b"job")
    method, _, _ = ch.basic_get("in")
    with ch.transaction():
        ch.basic_ack(method.delivery_tag)
        for i in range(100):
            ch.basic_publish("", "out", b"%d" % i)
        assert count(ch, "out") == 0  # nothing stored before the block ends
    assert drain(ch, "out") == [b"%d" % i for i in range(100)]  # publish order kept
    assert count(ch, "in") == 0
    assert not ch._state.unacked


def test_raising_block_stores_nothing_and_keeps_the_delivery_unacked(ch) -> None:
    ch.basic_publish("", "in", b"job")
    method, _, _ = ch.basic_get("in")
    with pytest.raises(KeyError):
        with ch.transaction():
            ch.basic_ack(method.delivery_tag)
            ch.basic_publish("", "out", b"result")
            raise KeyError("processing failed")
    assert count(ch, "out") == 0
    assert list(ch._state.unacked) == [method.delivery_tag]
    # Still leased to this channel: ack it again, for real.
    ch.basic_ack(method.delivery_tag)
    assert count(ch, "in") == 0


def test_nack_and_reject_inside_a_transaction(ch) -> None:
    ch.queue_declare("dlq")
    ch.queue_declare(
        "src", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}
    )
    for body in (b"a", b"b"):
        ch.basic_publish("", "src", body)
    first, _, _ = ch.basic_get("src")
    second, _, _ = ch.basic_get("src")
    with ch.transaction():
        ch.basic_reject(first.delivery_tag, requeue=False)  # dead-lettered at commit
        ch.basic_nack(second.delivery_tag, requeue=True)
        assert count(ch, "dlq") == 0
    assert drain(ch, "dlq") == [b"a"]
    assert drain(ch, "src") == [b"b"]


def test_consumer_callback_transaction(blocking_connect) -> None:
    connection = blocking_connect()
    ch = connection.channel()
    ch.queue_declare("in")
    ch.queue_declare("out")
    for i in range(5):
        ch.basic_publish("", "in", b"%d" % i)

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        with channel.transaction():
            channel.basic_publish("", "out", body + b"!")
            channel.basic_ack(method.delivery_tag)
        if body == b"4":
            channel.stop_consuming()

    ch.basic_qos(prefetch_count=2)
    ch.basic_consume("in", on_message)
    ch.start_consuming()
    assert drain(ch, "out") == [b"%d!" % i for i in range(5)]
    assert count(ch, "in") == 0


def test_unknown_tag_and_double_ack_inside_a_transaction(ch) -> None:
    ch.basic_publish("", "in", b"job")
    method, _, _ = ch.basic_get("in")
    with pytest.raises(errors.PreconditionFailedError):
        with ch.transaction():
            ch.basic_ack(method.delivery_tag)
            ch.basic_ack(method.delivery_tag)  # already acked in this transaction: 406


def test_nested_transaction_is_refused(ch) -> None:
    with ch.transaction():
        with pytest.raises(errors.ChannelWrongStateError):
            with ch.transaction():
                pass
        ch.basic_publish("", "out", b"x")
    assert count(ch, "out") == 1


def test_mandatory_unroutable_goes_to_return_callbacks_after_commit(ch) -> None:
    returned = []
    ch.add_on_return_callback(lambda _ch, method, _p, body: returned.append((method, body)))
    with ch.transaction():
        ch.basic_publish("", "nowhere", b"lost", mandatory=True)
        ch.basic_publish("", "out", b"kept", mandatory=True)
    assert [(m.reply_code, b) for m, b in returned] == [(312, b"lost")]
    assert drain(ch, "out") == [b"kept"]


def test_refused_publish_rolls_back_the_whole_transaction(ch) -> None:
    ch.queue_declare("full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", "full", b"fills it")
    ch.basic_publish("", "in", b"job")
    method, _, _ = ch.basic_get("in")
    with pytest.raises(errors.NackError, match="rolled back"):
        with ch.transaction():
            ch.basic_ack(method.delivery_tag)
            ch.basic_publish("", "out", b"a")
            ch.basic_publish("", "full", b"refused")
    assert count(ch, "out") == 0
    assert list(ch._state.unacked) == [method.delivery_tag]


def test_missing_exchange_fails_the_commit_and_closes_the_channel(ch) -> None:
    ch.basic_publish("", "in", b"job")
    method, _, _ = ch.basic_get("in")
    with pytest.raises(errors.NotFoundError):
        with ch.transaction():
            ch.basic_ack(method.delivery_tag)
            ch.basic_publish("no-such-exchange", "k", b"x")
    assert ch.is_closed
    other = ch.connection.channel()
    assert count(other, "in") == 1  # the close requeued the uncommitted ack's delivery


def test_mixed_batch_keeps_order_and_features(ch) -> None:
    """Plain publishes are batched; TTL, headers, priorities and fanout go the full path,
    in order: the queue's order is the publish order."""
    ch.exchange_declare("fan", "fanout")
    ch.queue_declare("f1")
    ch.queue_declare("f2")
    ch.queue_bind("f1", "fan")
    ch.queue_bind("f2", "fan")
    ch.queue_declare("ttl", arguments={"x-message-ttl": 60_000})
    with ch.transaction():
        ch.basic_publish("", "out", b"1")
        ch.basic_publish("", "out", b"2", BasicProperties(headers={"h": 1}))
        ch.basic_publish("", "out", b"3", BasicProperties(expiration="60000"))
        ch.basic_publish("", "out", b"4")
        ch.basic_publish("fan", "", b"f")
        ch.basic_publish("fan", "", b"g")
        ch.basic_publish("", "ttl", b"t")
    assert drain(ch, "out") == [b"1", b"2", b"3", b"4"]
    assert drain(ch, "f1") == [b"f", b"g"]
    assert drain(ch, "f2") == [b"f", b"g"]
    assert drain(ch, "ttl") == [b"t"]


def test_transaction_of_100_publishes_is_one_commit(ch, db_path: str) -> None:
    """One store operation (one BEGIN ... COMMIT) for the block, whatever its size."""
    engine = ch.connection._engine
    calls: list[Any] = []
    original = engine._execute

    def counting(batch: list[Any]) -> None:
        calls.append(len(batch))
        original(batch)

    engine._execute = counting
    try:
        with ch.transaction():
            for i in range(100):
                ch.basic_publish("", "out", b"%d" % i)
    finally:
        del engine._execute
    assert calls == [1]
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM mq_entries").fetchone()[0] == 100
    finally:
        conn.close()


def test_consumers_are_woken_by_a_committed_transaction(blocking_connect) -> None:
    consumer_conn = blocking_connect()
    consumer = consumer_conn.channel()
    consumer.queue_declare("out")
    producer = blocking_connect().channel()
    with producer.transaction():
        producer.basic_publish("", "out", b"hello")
    started = time.monotonic()
    for method, _, body in consumer.consume("out", inactivity_timeout=5):
        assert method is not None
        assert body == b"hello"
        consumer.basic_ack(method.delivery_tag)
        break
    assert time.monotonic() - started < 5
    consumer.cancel()


# --- asyncio ------------------------------------------------------------------------------


async def test_aio_transaction_commits_and_rolls_back(db_path: str) -> None:
    connection = await mqstore.aio.connect(db_path)
    try:
        ch = await connection.channel()
        await ch.queue_declare("in")
        await ch.queue_declare("out")
        await ch.basic_publish("", "in", b"job")
        method, _, _ = await ch.basic_get("in")
        with pytest.raises(RuntimeError):
            async with ch.transaction():
                await ch.basic_ack(method.delivery_tag)
                await ch.basic_publish("", "out", b"lost")
                raise RuntimeError
        assert (await ch.queue_declare("out", passive=True)).method.message_count == 0
        async with ch.transaction():
            await ch.basic_ack(method.delivery_tag)
            for i in range(100):
                await ch.basic_publish("", "out", b"%d" % i)
        assert (await ch.queue_declare("out", passive=True)).method.message_count == 100
        assert (await ch.queue_declare("in", passive=True)).method.message_count == 0
    finally:
        await connection.close()


async def test_aio_consume_process_produce(db_path: str) -> None:
    connection = await mqstore.aio.connect(db_path)
    try:
        ch = await connection.channel()
        await ch.queue_declare("in")
        await ch.queue_declare("out")
        for i in range(3):
            await ch.basic_publish("", "in", b"%d" % i)
        seen = 0
        async for delivery in ch.consume("in"):
            async with ch.transaction():
                await ch.basic_publish("", "out", delivery.body * 2)
                await delivery.ack()
            seen += 1
            if seen == 3:
                break
        assert (await ch.queue_declare("out", passive=True)).method.message_count == 3
        assert (await ch.queue_declare("in", passive=True)).method.message_count == 0
    finally:
        await connection.close()
