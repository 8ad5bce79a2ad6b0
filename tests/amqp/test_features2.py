"""Delayed delivery, direct reply-to and single active consumer over AMQP, with unmodified
pika against ``mqstore serve`` (real clock)."""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest


@pytest.fixture
def channel(params) -> Any:
    with pika.BlockingConnection(params) as conn:
        yield conn.channel()


def test_x_delay_header_with_the_plugins_exchange_type(channel, name):
    exchange = f"{name}-delayed"
    channel.exchange_declare(exchange, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    channel.queue_declare(name)
    channel.queue_bind(name, exchange, "k")
    channel.confirm_delivery()
    sent = time.monotonic()
    channel.basic_publish(exchange, "k", b"later", pika.BasicProperties(headers={"x-delay": 300}))
    channel.basic_publish("", name, b"now")
    _, _, body = channel.basic_get(name, auto_ack=True)
    assert body == b"now"
    got = None
    for _method, _props, body in channel.consume(name, auto_ack=True, inactivity_timeout=5):
        got = body
        break
    channel.cancel()
    assert got == b"later"
    assert 0.29 <= time.monotonic() - sent < 3


def test_direct_reply_to_with_pika(params, name):
    with pika.BlockingConnection(params) as client, pika.BlockingConnection(params) as server:
        sch = server.channel()
        sch.queue_declare(name)

        def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
            assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
            ch.basic_publish(
                "",
                props.reply_to,
                body[::-1],
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
            ch.basic_ack(method.delivery_tag)

        sch.basic_consume(name, on_request)
        cch = client.channel()
        replies: list[tuple[str, bytes]] = []
        cch.basic_consume(
            "amq.rabbitmq.reply-to",
            lambda ch, m, p, b: replies.append((p.correlation_id, b)),
            auto_ack=True,
        )
        cch.basic_publish(
            "",
            name,
            b"abc",
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1"),
        )
        deadline = time.monotonic() + 10
        while not replies and time.monotonic() < deadline:
            server.process_data_events(time_limit=0.05)
            client.process_data_events(time_limit=0.05)
        assert replies == [("c1", b"cba")]


def test_single_active_consumer_with_pika(params, name):
    with pika.BlockingConnection(params) as one, pika.BlockingConnection(params) as two:
        ch1, ch2 = one.channel(), two.channel()
        ch1.queue_declare(name, arguments={"x-single-active-consumer": True})
        got: list[tuple[str, bytes]] = []

        def consumer(label: str) -> Any:
            def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
                got.append((label, body))
                ch.basic_ack(method.delivery_tag)

            return on_message

        ch1.basic_consume(name, consumer("one"))
        ch2.basic_consume(name, consumer("two"))
        for i in range(5):
            ch2.basic_publish("", name, str(i).encode())

        def pump(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                one.process_data_events(time_limit=0.02)
                two.process_data_events(time_limit=0.02)

        pump(0.5)
        assert got == [("one", str(i).encode()) for i in range(5)]
        ch1.close()
        ch2.basic_publish("", name, b"after")
        deadline = time.monotonic() + 10
        while len(got) < 6 and time.monotonic() < deadline:
            two.process_data_events(time_limit=0.05)
        assert got[5:] == [("two", b"after")]
