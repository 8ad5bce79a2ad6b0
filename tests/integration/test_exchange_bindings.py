"""Exchange-to-exchange bindings (RabbitMQ's exchange.bind) through the embedded APIs: the
same core the AMQP server uses."""

from __future__ import annotations

import pytest

import mqstore
import mqstore.aio


def test_bind_routes_through_and_unbind_stops(blocking_connect) -> None:
    channel = blocking_connect().channel()
    channel.exchange_declare("front", exchange_type="direct")
    channel.exchange_declare("back", exchange_type="headers")
    channel.exchange_declare("side", exchange_type="topic", auto_delete=True)
    channel.queue_declare("q")
    channel.queue_bind("q", "back", arguments={"x-match": "all", "kind": "order"})
    channel.exchange_bind("back", "front", routing_key="orders")
    channel.exchange_bind("side", "front", routing_key="orders")
    props = mqstore.BasicProperties(headers={"kind": "order"})
    channel.basic_publish("front", "orders", b"1", props)
    channel.basic_publish("front", "other", b"2", props)  # the key does not match
    method, _, body = channel.basic_get("q", auto_ack=True)
    assert (body, method.exchange) == (b"1", "front")
    assert channel.basic_get("q")[0] is None
    channel.exchange_unbind("back", "front", routing_key="orders")
    channel.basic_publish("front", "orders", b"3", props)
    assert channel.basic_get("q")[0] is None
    # An auto-delete exchange goes when it loses its last binding as a source, not as a
    # destination.
    channel.exchange_unbind("side", "front", routing_key="orders")
    channel.exchange_declare("side", passive=True)
    channel.exchange_declare("temp", exchange_type="fanout", auto_delete=True)
    channel.exchange_bind("back", "temp")
    channel.exchange_unbind("back", "temp")
    with pytest.raises(mqstore.NotFoundError):
        channel.exchange_declare("temp", passive=True)


def test_bind_refusals(blocking_connect) -> None:
    connection = blocking_connect()
    channel = connection.channel()
    channel.exchange_declare("a")
    with pytest.raises(mqstore.NotFoundError, match="no exchange 'missing'"):
        channel.exchange_bind("a", "missing")
    with pytest.raises(mqstore.AccessRefusedError):
        connection.channel().exchange_bind("", "a")
    channel = connection.channel()
    channel.exchange_declare("b")
    channel.exchange_bind("b", "a", "k")
    with pytest.raises(mqstore.PreconditionFailedError, match="in use"):
        channel.exchange_delete("a", if_unused=True)
    channel = connection.channel()
    channel.exchange_delete("b")  # deleting the destination deletes the binding
    channel.exchange_delete("a", if_unused=True)


async def test_async_bind(db_path: str) -> None:
    async with await mqstore.aio.connect(db_path) as connection:
        channel = await connection.channel()
        await channel.exchange_declare("src", exchange_type="fanout")
        await channel.exchange_declare("dst", exchange_type="fanout")
        await channel.queue_declare("q")
        await channel.queue_bind("q", "dst")
        await channel.exchange_bind("dst", "src")
        await channel.basic_publish("src", "", b"x")
        _method, _, body = await channel.basic_get("q", auto_ack=True)
        assert body == b"x"
        await channel.exchange_unbind("dst", "src")
