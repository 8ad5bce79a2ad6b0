"""Issue 5's features through the asyncio API (mqstore.aio): delayed delivery, direct
reply-to and the RPC helper, single active consumer, consumer priorities, deduplication,
and the queue features test_queue_features_aio.py does not cover yet.

Time-dependent tests use a ManualClock and run the engine's upkeep by hand (as
test_delays.py does); nothing sleeps to synchronise: waits are bounded by wait_for."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest

import mqstore
from mqstore import BasicProperties
from mqstore.aio import AsyncChannel, AsyncConnection
from mqstore.rpc import REPLY_TO

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


@pytest.fixture
async def connect(db_path: str) -> AsyncIterator[Any]:
    """Open real-clock asyncio connections on db_path; all closed at teardown."""
    opened: list[AsyncConnection] = []

    async def open_one() -> AsyncConnection:
        connection = await mqstore.aio.connect(db_path)
        opened.append(connection)
        return connection

    yield open_one
    for connection in reversed(opened):
        if connection.is_open:
            await connection.close()


async def sweep(connection: AsyncConnection) -> None:
    await asyncio.get_running_loop().run_in_executor(None, connection.engine.upkeep)


async def get(ch: AsyncChannel, queue: str) -> bytes | None:
    return (await ch.basic_get(queue, auto_ack=True))[2]


async def drain(ch: AsyncChannel, queue: str) -> list[tuple[Any, Any, bytes]]:
    out = []
    while True:
        method, props, body = await ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))


async def bodies(ch: AsyncChannel, queue: str) -> list[bytes]:
    return [body for _, _, body in await drain(ch, queue)]


async def ready(ch: AsyncChannel, queue: str) -> int:
    return (await ch.queue_declare(queue, passive=True)).method.message_count


def counters(db_path: str) -> dict[str, int]:
    db = sqlite3.connect(db_path)
    try:
        return dict(db.execute("SELECT name, value FROM mq_counters").fetchall())
    finally:
        db.close()


def collector(out: asyncio.Queue, name: str, ack: bool = True):
    async def on_message(ch, method, props, body):
        out.put_nowait((name, body))
        if ack:
            await ch.basic_ack(method.delivery_tag)

    return on_message


async def take(out: asyncio.Queue, n: int) -> list[tuple[str, bytes]]:
    return [await asyncio.wait_for(out.get(), WAIT_S) for _ in range(n)]


# --- delayed delivery ------------------------------------------------------------------------


async def test_delay_argument_is_seconds_and_not_deliverable_before_due(ch, fake_clock):
    await ch.queue_declare("q")
    await ch.basic_publish("", "q", b"later", delay=2)
    await ch.basic_publish("", "q", b"now")
    assert await ready(ch, "q") == 1
    assert await get(ch, "q") == b"now"
    assert await get(ch, "q") is None
    fake_clock.advance(1999)
    assert await get(ch, "q") is None
    fake_clock.advance(1)
    assert await get(ch, "q") == b"later"  # promoted by the lease, no sweep


async def test_x_delay_header_is_milliseconds_and_kept(ch, fake_clock):
    await ch.queue_declare("q")
    await ch.basic_publish("", "q", b"h", BasicProperties(headers={"x-delay": 250}))
    fake_clock.advance(249)
    assert await get(ch, "q") is None
    fake_clock.advance(1)
    method, props, body = await ch.basic_get("q", auto_ack=True)
    assert body == b"h"
    assert props.headers["x-delay"] == 250
    assert not method.redelivered


async def test_delay_argument_wins_over_header(ch, fake_clock):
    await ch.queue_declare("q")
    await ch.basic_publish("", "q", b"x", BasicProperties(headers={"x-delay": 10_000}), delay=0.05)
    fake_clock.advance(50)
    assert await get(ch, "q") == b"x"


async def test_waiting_consumer_is_woken_when_the_delay_is_due(connection, ch, fake_clock):
    await ch.queue_declare("q")
    await ch.basic_publish("", "q", b"scheduled", delay=1)

    async def first() -> Any:
        async for delivery in ch.consume("q", auto_ack=True):
            return delivery

    waiter = asyncio.ensure_future(first())
    try:
        # Still scheduled: not counted, not gettable from another channel, not delivered.
        other = await connection.channel()
        assert await ready(other, "q") == 0
        assert await get(other, "q") is None
        assert not waiter.done()
        fake_clock.advance(1000)
        await sweep(connection)
        delivery = await asyncio.wait_for(waiter, WAIT_S)
    finally:
        waiter.cancel()
    assert delivery.body == b"scheduled"


async def test_x_delayed_message_exchange_routes_as_its_delayed_type(ch, fake_clock):
    await ch.exchange_declare(
        "delayed", "x-delayed-message", arguments={"x-delayed-type": "direct"}
    )
    await ch.queue_declare("q")
    await ch.queue_bind("q", "delayed", "k")
    await ch.basic_publish("delayed", "k", b"x", BasicProperties(headers={"x-delay": 100}))
    await ch.basic_publish("delayed", "no", b"dropped", BasicProperties(headers={"x-delay": 100}))
    assert await get(ch, "q") is None
    fake_clock.advance(100)
    assert await bodies(ch, "q") == [b"x"]


async def test_unroutable_delayed_mandatory_raises_at_publish(ch):
    with pytest.raises(mqstore.UnroutableError):
        await ch.basic_publish("", "nowhere", b"x", mandatory=True, delay=1)


async def test_bad_delay_argument_is_refused(ch):
    await ch.queue_declare("q")
    with pytest.raises(ValueError):
        await ch.basic_publish("", "q", b"x", delay=-1)
    assert await ready(ch, "q") == 0


async def test_scheduled_message_survives_reconnect(db_path, fake_clock):
    first = await mqstore.aio.connect(db_path, clock=fake_clock)
    ch = await first.channel()
    await ch.queue_declare("q", durable=True)
    await ch.basic_publish("", "q", b"persist", BasicProperties(delivery_mode=2), delay=5)
    await first.close()
    second = await mqstore.aio.connect(db_path, clock=fake_clock)
    try:
        ch = await second.channel()
        assert await get(ch, "q") is None
        fake_clock.advance(5000)
        assert await get(ch, "q") == b"persist"
    finally:
        await second.close()


# --- direct reply-to and RPC -----------------------------------------------------------------


async def rpc_server(ch: AsyncChannel, queue: str) -> None:
    async for delivery in ch.consume(queue):
        await mqstore.rpc.reply(ch, delivery.properties, delivery.body.upper())
        await delivery.ack()


async def test_direct_reply_to_by_hand(connect):
    client = await (await connect()).channel()
    server = await (await connect()).channel()
    await server.queue_declare("requests")
    replies: asyncio.Queue = asyncio.Queue()
    await client.basic_consume(
        REPLY_TO, lambda c, m, p, b: replies.put_nowait((p.correlation_id, b)), auto_ack=True
    )
    await client.basic_publish(
        "", "requests", b"ping", BasicProperties(reply_to=REPLY_TO, correlation_id="1")
    )
    _method, props, body = await server.basic_get("requests", auto_ack=True)
    assert body == b"ping"
    assert props.reply_to.startswith(REPLY_TO + ".")
    assert props.reply_to != REPLY_TO
    await server.basic_publish("", props.reply_to, b"pong", BasicProperties(correlation_id="1"))
    assert await asyncio.wait_for(replies.get(), WAIT_S) == ("1", b"pong")


async def test_reply_to_rules(connect):
    ch = await (await connect()).channel()
    await ch.queue_declare("requests")
    with pytest.raises(mqstore.errors.PreconditionFailedError, match="fast reply consumer"):
        await ch.basic_publish("", "requests", b"x", BasicProperties(reply_to=REPLY_TO))
    ch = await (await connect()).channel()
    with pytest.raises(mqstore.errors.PreconditionFailedError, match="cannot acknowledge"):
        await ch.basic_consume(REPLY_TO, lambda *a: None)


async def test_rpc_call_async_round_trip(connect):
    server = await (await connect()).channel()
    await server.queue_declare("rpc")
    task = asyncio.ensure_future(rpc_server(server, "rpc"))
    try:
        client = await (await connect()).channel()
        results = await asyncio.wait_for(
            asyncio.gather(
                *(mqstore.rpc.call_async(client, "", "rpc", f"m{i}", timeout=10) for i in range(5))
            ),
            WAIT_S,
        )
        assert results == [f"M{i}".encode() for i in range(5)]
        props, body = await mqstore.rpc.call_async(
            client,
            "",
            "rpc",
            b"full",
            timeout=10,
            properties=BasicProperties(headers={"k": "v"}),
            full=True,
        )
        assert body == b"FULL"
        assert props.correlation_id
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_rpc_call_async_timeout_and_unroutable(connect):
    ch = await (await connect()).channel()
    await ch.queue_declare("nobody-home")
    with pytest.raises(TimeoutError, match="no reply to the RPC call to 'nobody-home'"):
        await mqstore.rpc.call_async(ch, "", "nobody-home", b"x", timeout=0.2)
    assert await ready(ch, "nobody-home") == 1  # the request itself was published
    with pytest.raises(mqstore.UnroutableError):
        await asyncio.wait_for(mqstore.rpc.call_async(ch, "", "missing", b"x", timeout=30), 5)


# --- single active consumer ------------------------------------------------------------------


async def test_single_active_consumer_failover(connect):
    cha = await (await connect()).channel()
    chb = await (await connect()).channel()
    await cha.queue_declare("q", arguments={"x-single-active-consumer": True})
    got_a: asyncio.Queue = asyncio.Queue()
    got_b: asyncio.Queue = asyncio.Queue()
    await cha.basic_consume("q", collector(got_a, "a", ack=False))
    await chb.basic_consume("q", collector(got_b, "b"))
    for i in range(3):
        await cha.basic_publish("", "q", str(i))
    # All go to the active consumer, in order, although it acks nothing.
    assert await take(got_a, 3) == [("a", b"0"), ("a", b"1"), ("a", b"2")]
    assert got_b.empty()
    await cha.close()  # unacked requeued; b becomes active
    redelivered = await take(got_b, 3)
    assert redelivered == [("b", b"0"), ("b", b"1"), ("b", b"2")]
    await chb.basic_publish("", "q", b"3")
    assert await take(got_b, 1) == [("b", b"3")]
    assert got_a.empty()


async def test_single_active_consumer_failover_on_cancel(connect):
    cha = await (await connect()).channel()
    chb = await (await connect()).channel()
    await cha.queue_declare("q", arguments={"x-single-active-consumer": True})
    got: asyncio.Queue = asyncio.Queue()
    tag = await cha.basic_consume("q", collector(got, "a"))
    await chb.basic_consume("q", collector(got, "b"))
    await cha.basic_publish("", "q", b"1")
    assert await take(got, 1) == [("a", b"1")]
    await cha.basic_cancel(tag)
    await cha.basic_publish("", "q", b"2")
    assert await take(got, 1) == [("b", b"2")]


# --- consumer priorities ---------------------------------------------------------------------


async def test_higher_priority_consumer_gets_everything_while_it_has_room(connect):
    hi = await (await connect()).channel()
    lo = await (await connect()).channel()
    await hi.queue_declare("q")
    got: asyncio.Queue = asyncio.Queue()
    await lo.basic_consume("q", collector(got, "lo"))
    await hi.basic_consume("q", collector(got, "hi"), arguments={"x-priority": 10})
    for i in range(10):
        await hi.basic_publish("", "q", str(i))
    assert [name for name, _ in await take(got, 10)] == ["hi"] * 10


async def test_lower_priority_consumer_takes_over_when_higher_is_full(connect):
    hi = await (await connect()).channel()
    lo = await (await connect()).channel()
    await hi.queue_declare("q")
    await hi.basic_qos(prefetch_count=2)
    got: asyncio.Queue = asyncio.Queue()
    await hi.basic_consume("q", collector(got, "hi", ack=False), arguments={"x-priority": 5})
    await lo.basic_consume("q", collector(got, "lo"))
    for i in range(5):
        await hi.basic_publish("", "q", str(i))
    names = sorted(name for name, _ in await take(got, 5))
    assert names == ["hi", "hi", "lo", "lo", "lo"]
    # Once it has room again, it is preferred again.
    await hi.basic_ack(0, multiple=True)
    for i in range(2):
        await lo.basic_publish("", "q", f"again{i}")
    assert await take(got, 2) == [("hi", b"again0"), ("hi", b"again1")]


async def test_x_priority_must_be_an_integer(connect):
    ch = await (await connect()).channel()
    await ch.queue_declare("q")
    with pytest.raises(mqstore.errors.PreconditionFailedError):
        await ch.basic_consume("q", lambda *a: None, arguments={"x-priority": "high"})


# --- deduplication ---------------------------------------------------------------------------


async def test_dedup_drops_a_repeated_message_id_within_the_window(ch, fake_clock, db_path):
    await ch.queue_declare("q", arguments={"x-deduplication-window": 2})
    mid = BasicProperties(message_id="a")
    await ch.basic_publish("", "q", b"first", mid, mandatory=True)
    await ch.basic_publish("", "q", b"again", mid, mandatory=True)  # silently dropped
    await ch.basic_publish("", "q", b"other", BasicProperties(message_id="b"))
    await ch.basic_publish("", "q", b"no id")
    await ch.basic_publish("", "q", b"no id")
    assert await bodies(ch, "q") == [b"first", b"other", b"no id", b"no id"]
    assert counters(db_path)["deduplicated"] == 1
    fake_clock.advance(1_000)
    await ch.basic_publish("", "q", b"still in window", mid)
    assert await bodies(ch, "q") == []
    fake_clock.advance(1_500)  # 2.5 s after the first: the window has passed
    await ch.basic_publish("", "q", b"after window", mid)
    assert await bodies(ch, "q") == [b"after window"]


# --- queue features missing from test_queue_features_aio.py ------------------------------------


async def dlx_pair(ch: AsyncChannel, source: str = "src", **args: Any) -> None:
    await ch.exchange_declare("dlx", "fanout")
    await ch.queue_declare("dead")
    await ch.queue_bind("dead", "dlx")
    await ch.queue_declare(source, arguments={"x-dead-letter-exchange": "dlx", **args})


async def test_max_length_bytes_drop_head(ch):
    await ch.queue_declare("q", arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        await ch.basic_publish("", "q", body)
    assert await bodies(ch, "q") == [b"bbbb", b"cccc"]


async def test_reject_publish_dlx_nacks_and_dead_letters(ch):
    await dlx_pair(ch, **{"x-max-length": 0, "x-overflow": "reject-publish-dlx"})
    with pytest.raises(mqstore.NackError):
        await ch.basic_publish("", "src", b"m")
    assert ch.is_open
    [(_, props, body)] = await drain(ch, "dead")
    assert body == b"m"
    assert (props.headers["x-death"][0]["reason"], props.headers["x-death"][0]["queue"]) == (
        "maxlen",
        "src",
    )


async def test_delivery_limit_counts_deliveries_then_dead_letters(ch):
    await dlx_pair(ch, **{"x-queue-type": "quorum", "x-delivery-limit": 2})
    await ch.basic_publish("", "src", b"poison")
    counts = []
    for _ in range(3):
        method, props, _ = await ch.basic_get("src")
        assert method is not None
        counts.append((props.headers or {}).get("x-delivery-count", 0))
        await ch.basic_nack(method.delivery_tag, requeue=True)
    assert counts == [0, 1, 2]
    assert await bodies(ch, "src") == []
    [(_, props, body)] = await drain(ch, "dead")
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"


async def test_max_priority_is_fifo_within_a_priority_and_caps_higher_values(ch):
    await ch.queue_declare("q", arguments={"x-max-priority": 5})
    for priority, body in ((9, "capped"), (5, "five"), (0, "zero"), (None, "none")):
        await ch.basic_publish("", "q", body, BasicProperties(priority=priority))
    assert await bodies(ch, "q") == [b"capped", b"five", b"zero", b"none"]


async def test_exchange_to_exchange_bindings(ch):
    await ch.exchange_declare("upstream", "fanout")
    await ch.exchange_declare("downstream", "direct")
    await ch.queue_declare("q")
    await ch.queue_bind("q", "downstream", "k")
    await ch.exchange_bind("downstream", "upstream")
    await ch.basic_publish("upstream", "k", b"via-e2e")
    assert await bodies(ch, "q") == [b"via-e2e"]
    await ch.exchange_unbind("downstream", "upstream")
    with pytest.raises(mqstore.UnroutableError):
        await ch.basic_publish("upstream", "k", b"gone", mandatory=True)


async def test_exchange_binding_cycle_delivers_once(ch):
    await ch.exchange_declare("a", "fanout")
    await ch.exchange_declare("b", "fanout")
    await ch.exchange_bind("b", "a")
    await ch.exchange_bind("a", "b")
    await ch.queue_declare("q")
    await ch.queue_bind("q", "b")
    await ch.basic_publish("a", "", b"once")
    assert await bodies(ch, "q") == [b"once"]


async def test_basic_recover_redelivers_unacked(ch):
    await ch.queue_declare("q")
    await ch.basic_publish("", "q", b"m")
    method, _, _ = await ch.basic_get("q")
    assert not method.redelivered
    await ch.basic_recover(requeue=True)
    method, _, body = await ch.basic_get("q", auto_ack=True)
    assert (body, method.redelivered) == (b"m", True)


@pytest.mark.parametrize("kind", ["classic", "quorum"])
async def test_queue_types_accepted(ch, kind):
    await ch.queue_declare("q", durable=True, arguments={"x-queue-type": kind})
    await ch.basic_publish("", "q", b"m")
    assert await bodies(ch, "q") == [b"m"]
