"""The queue features through the asyncio API (mqstore.aio): the same core rules as the
blocking API, one test per feature at least."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import mqstore
from mqstore import BasicProperties
from mqstore.aio import AsyncChannel, AsyncConnection

WAIT_S = 15


@pytest.fixture
async def connection(db_path: str, fake_clock) -> AsyncIterator[AsyncConnection]:
    connection = await mqstore.aio.connect(db_path, clock=fake_clock)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def ch(connection: AsyncConnection) -> AsyncChannel:
    return await connection.channel()


async def sweep(connection: AsyncConnection) -> None:
    await asyncio.get_running_loop().run_in_executor(None, connection.engine.upkeep)


async def drain(ch: AsyncChannel, queue: str) -> list[tuple[Any, Any, bytes]]:
    out = []
    while True:
        method, props, body = await ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))


async def bodies(ch: AsyncChannel, queue: str) -> list[bytes]:
    return [body for _, _, body in await drain(ch, queue)]


async def dlx_pair(ch: AsyncChannel, source: str = "src", **args: Any) -> None:
    await ch.exchange_declare("dlx", "fanout")
    await ch.queue_declare("dead")
    await ch.queue_bind("dead", "dlx")
    await ch.queue_declare(source, arguments={"x-dead-letter-exchange": "dlx", **args})


async def test_ttl_expiry_dead_letters_to_a_waiting_consumer(connection, ch, fake_clock):
    await dlx_pair(ch, **{"x-message-ttl": 1000})
    await ch.basic_publish("", "src", b"m", BasicProperties(expiration="50"))

    async def first() -> Any:
        async for delivery in ch.consume("dead", auto_ack=True):
            return delivery

    waiter = asyncio.ensure_future(first())
    await asyncio.sleep(0.05)
    fake_clock.advance(50)
    await sweep(connection)
    delivery = await asyncio.wait_for(waiter, WAIT_S)
    assert delivery.body == b"m"
    death = delivery.properties.headers["x-death"][0]
    assert (death["queue"], death["reason"], death["original-expiration"]) == (
        "src",
        "expired",
        "50",
    )
    assert await bodies(ch, "src") == []


async def test_expired_message_is_skipped_by_basic_get(ch, fake_clock):
    await ch.queue_declare("q", arguments={"x-message-ttl": 100})
    await ch.basic_publish("", "q", b"old")
    fake_clock.advance(100)
    await ch.basic_publish("", "q", b"new")
    assert await bodies(ch, "q") == [b"new"]


async def test_reject_publish_raises_nack_error(ch):
    await ch.queue_declare("q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    await ch.basic_publish("", "q", b"a")
    with pytest.raises(mqstore.NackError):
        await ch.basic_publish("", "q", b"b")
    assert ch.is_open
    assert await bodies(ch, "q") == [b"a"]


async def test_drop_head_with_dlx(ch):
    await dlx_pair(ch, **{"x-max-length": 2})
    for i in range(4):
        await ch.basic_publish("", "src", str(i))
    assert await bodies(ch, "src") == [b"2", b"3"]
    dead = await drain(ch, "dead")
    assert [body for _, _, body in dead] == [b"0", b"1"]
    assert all(p.headers["x-death"][0]["reason"] == "maxlen" for _, p, _ in dead)


async def test_reject_dead_letters_with_x_death(ch):
    await dlx_pair(ch)
    await ch.basic_publish("", "src", b"m")
    method, _, _ = await ch.basic_get("src")
    await ch.basic_reject(method.delivery_tag, requeue=False)
    [(method, props, body)] = await drain(ch, "dead")
    assert (method.exchange, method.routing_key, body) == ("dlx", "src", b"m")
    death = props.headers["x-death"][0]
    assert {k: death[k] for k in ("queue", "reason", "count", "exchange", "routing-keys")} == {
        "queue": "src",
        "reason": "rejected",
        "count": 1,
        "exchange": "",
        "routing-keys": ["src"],
    }
    assert props.headers["x-first-death-reason"] == "rejected"


async def test_poison_message_dead_lettered_exactly_once(ch):
    await dlx_pair(ch, **{"x-queue-type": "quorum", "x-delivery-limit": 1})
    await ch.basic_publish("", "src", b"poison")
    deliveries = 0
    async for delivery in ch.consume("src"):
        deliveries += 1
        await delivery.nack(requeue=True)
        if deliveries == 2:
            break
    assert await bodies(ch, "src") == []
    assert await bodies(ch, "dead") == [b"poison"]


async def test_dead_letter_cycle_dropped(connection, ch, fake_clock):
    await ch.queue_declare("loop", arguments={"x-dead-letter-exchange": "", "x-message-ttl": 10})
    await ch.basic_publish("", "loop", b"m")
    fake_clock.advance(10)
    await sweep(connection)
    assert await bodies(ch, "loop") == []


async def test_priorities(ch):
    await ch.queue_declare("q", arguments={"x-max-priority": 10})
    for priority, body in ((1, "a"), (3, "b"), (1, "c"), (3, "d"), (0, "e")):
        await ch.basic_publish("", "q", body, BasicProperties(priority=priority))
    assert await bodies(ch, "q") == [b"b", b"d", b"a", b"c", b"e"]


async def test_alternate_exchange(ch):
    await ch.exchange_declare("ae", "fanout")
    await ch.queue_declare("unrouted")
    await ch.queue_bind("unrouted", "ae")
    await ch.exchange_declare("main", "topic", arguments={"alternate-exchange": "ae"})
    await ch.basic_publish("main", "a.b", b"m", mandatory=True)
    [(method, _, body)] = await drain(ch, "unrouted")
    assert (method.exchange, body) == ("main", b"m")


async def test_x_expires_deletes_an_unused_queue(connection, ch, fake_clock):
    await ch.queue_declare("q", arguments={"x-expires": 500})
    fake_clock.advance(500)
    await sweep(connection)
    with pytest.raises(mqstore.NotFoundError):
        await ch.queue_declare("q", passive=True)


async def test_unknown_queue_type_406(ch):
    with pytest.raises(mqstore.PreconditionFailedError):
        await ch.queue_declare("q", arguments={"x-queue-type": "nope"})
