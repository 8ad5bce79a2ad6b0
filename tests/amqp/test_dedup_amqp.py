"""x-deduplication-window over AMQP: a duplicate is confirmed (acked) and dropped silently."""

from __future__ import annotations

import pika


def test_duplicate_is_acked_and_dropped(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare(name, arguments={"x-deduplication-window": 60})
        props = pika.BasicProperties(message_id="order-1")
        channel.basic_publish("", name, b"first", props, mandatory=True)
        channel.basic_publish("", name, b"again", props, mandatory=True)  # no Nack, no Return
        channel.basic_publish("", name, b"other", pika.BasicProperties(message_id="order-2"))
        assert channel.queue_declare(name, passive=True).method.message_count == 2
        _, _, body = channel.basic_get(name, auto_ack=True)
        assert body == b"first"


def test_transaction_of_duplicates_stores_one(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name, arguments={"x-deduplication-window": 60})
        channel.tx_select()
        for _ in range(3):
            channel.basic_publish("", name, b"x", pika.BasicProperties(message_id="same"))
        channel.tx_commit()
        assert channel.queue_declare(name, passive=True).method.message_count == 1
