"""AMQP transactions (Tx.Select / Tx.Commit / Tx.Rollback) through pika, with RabbitMQ's
rules for mixing tx and confirm modes."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest


def closed_by(channel_call, *args, **kwargs) -> pika.exceptions.ChannelClosedByBroker:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel_call(*args, **kwargs)
    return info.value


def count(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def test_commit_stores_publishes_and_acks_together(params, name) -> None:
    src, dst = name + ".in", name + ".out"
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(src)
        channel.queue_declare(dst)
        channel.basic_publish("", src, b"input")
        channel.tx_select()
        method, _, body = channel.basic_get(src)
        assert body == b"input"
        channel.basic_ack(method.delivery_tag)
        for i in range(10):
            channel.basic_publish("", dst, b"out-%d" % i)
        observer = conn.channel()
        assert count(observer, dst) == 0  # nothing visible before the commit
        channel.tx_commit()
        assert count(observer, dst) == 10
        assert count(observer, src) == 0
        # The channel stays transactional: the next commit is a new transaction.
        channel.basic_publish("", dst, b"again")
        assert count(observer, dst) == 10
        channel.tx_commit()
        assert count(observer, dst) == 11


def test_rollback_discards_publishes_and_keeps_acked_unacked(params, name) -> None:
    src, dst = name + ".in", name + ".out"
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(src)
        channel.queue_declare(dst)
        channel.basic_publish("", src, b"input")
        channel.tx_select()
        method, _, _ = channel.basic_get(src)
        channel.basic_ack(method.delivery_tag)
        channel.basic_publish("", dst, b"output")
        channel.tx_rollback()
        observer = conn.channel()
        assert count(observer, dst) == 0
        # The delivery is unacked on the channel again: ack it for real now.
        channel.basic_ack(method.delivery_tag)
        channel.tx_commit()
        assert count(observer, src) == 0
        assert count(observer, dst) == 0


def test_channel_close_requeues_acks_of_an_uncommitted_transaction(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name)
        channel.basic_publish("", name, b"input")
        channel.tx_select()
        method, _, _ = channel.basic_get(name)
        channel.basic_ack(method.delivery_tag)
        channel.basic_publish("", name, b"never")
        channel.close()
        observer = conn.channel()
        assert count(observer, name) == 1
        _, _, body = observer.basic_get(name, auto_ack=True)
        assert body == b"input"


def test_mandatory_unroutable_is_returned_at_commit(params, name) -> None:
    returned = []
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.add_on_return_callback(lambda *args: returned.append(args[3]))
        channel.tx_select()
        channel.basic_publish("", name + ".nowhere", b"lost", mandatory=True)
        channel.tx_commit()
        conn.process_data_events(0.2)
        assert returned == [b"lost"]


def test_tx_rules(params) -> None:
    with pika.BlockingConnection(params) as conn:
        err = closed_by(conn.channel().tx_commit)
        assert (err.reply_code, err.reply_text) == (
            406,
            "PRECONDITION_FAILED - channel is not transactional",
        )
        err = closed_by(conn.channel().tx_rollback)
        assert err.reply_code == 406
        channel = conn.channel()
        channel.confirm_delivery()
        err = closed_by(channel.tx_select)
        assert (err.reply_code, err.reply_text) == (
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
        )
        channel = conn.channel()
        channel.tx_select()
        channel.tx_select()  # again: harmless, as in RabbitMQ
        err = closed_by(channel.confirm_delivery)
        assert (err.reply_code, err.reply_text) == (
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
        )


def test_full_reject_publish_queue_fails_the_whole_commit(params, name) -> None:
    src, dst = name + ".in", name + ".out"
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(src)
        channel.queue_declare(dst, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        channel.basic_publish("", src, b"input")
        channel.basic_publish("", dst, b"fills it")
        channel.tx_select()
        method, _, _ = channel.basic_get(src)
        channel.basic_ack(method.delivery_tag)
        channel.basic_publish("", dst, b"refused")
        err = closed_by(channel.tx_commit)
        assert err.reply_code == 406
        observer = conn.channel()
        assert count(observer, dst) == 1
        assert count(observer, src) == 1  # the ack was not committed; the close requeued it
