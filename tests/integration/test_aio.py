"""The asyncio API (mqstore.aio) against real SQLite files.

Waits are bounded by ``asyncio.wait_for(..., WAIT_S)``: the bound is a failure limit, never
reached by a passing test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest

import mqstore
from mqstore import BasicProperties
from mqstore.aio import AsyncChannel, AsyncConnection, Delivery

WAIT_S = 15


@pytest.fixture
async def connection(db_path: str) -> AsyncIterator[AsyncConnection]:
    connection = await mqstore.aio.connect(db_path)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def channel(connection: AsyncConnection) -> AsyncChannel:
    channel = await connection.channel()
    await channel.queue_declare("q")
    return channel


async def publish_all(channel: AsyncChannel, bodies: list[bytes], queue: str = "q") -> None:
    for body in bodies:
        await channel.basic_publish("", queue, body)


async def ready(channel: AsyncChannel, queue: str = "q") -> int:
    return int((await channel.queue_declare(queue, passive=True)).method.message_count)


async def consumers(channel: AsyncChannel, queue: str = "q") -> int:
    return int((await channel.queue_declare(queue, passive=True)).method.consumer_count)


async def take(deliveries: AsyncIterator[Delivery], count: int) -> list[Delivery]:
    """The next ``count`` deliveries of an iterator, bounded in time."""

    async def go() -> list[Delivery]:
        return [await anext(deliveries) for _ in range(count)]

    return await asyncio.wait_for(go(), WAIT_S)


# --- the surface -------------------------------------------------------------------------

CHANNEL_METHODS = [
    "exchange_declare",
    "exchange_delete",
    "queue_declare",
    "queue_delete",
    "queue_purge",
    "queue_bind",
    "queue_unbind",
    "basic_qos",
    "basic_publish",
    "basic_get",
    "basic_ack",
    "basic_nack",
    "basic_reject",
    "basic_recover",
    "basic_consume",
    "basic_cancel",
    "confirm_delivery",
    "close",
]


@pytest.mark.parametrize("name", CHANNEL_METHODS)
def test_async_channel_has_the_blocking_method_as_a_coroutine(name: str) -> None:
    assert hasattr(mqstore.BlockingChannel, name)
    assert inspect.iscoroutinefunction(getattr(AsyncChannel, name))
    assert not name.endswith("_async")


async def test_awaited_declare_bind_publish_get_ack_round_trip(
    connection: AsyncConnection,
) -> None:
    channel = await connection.channel()
    declared = await channel.exchange_declare("x", exchange_type="topic")
    assert declared.method.NAME == "Exchange.DeclareOk"
    queue = await channel.queue_declare("jobs", durable=True)
    assert (queue.method.queue, queue.method.message_count) == ("jobs", 0)
    await channel.queue_bind("jobs", "x", routing_key="job.*")
    properties = BasicProperties(content_type="text/plain", headers={"n": 1})
    await channel.basic_publish("x", "job.a", b"first", properties=properties)
    await channel.basic_publish("x", "job.b", "second")

    method, got_properties, body = await channel.basic_get("jobs")
    assert (body, method.routing_key, method.exchange, method.message_count) == (
        b"first",
        "job.a",
        "x",
        1,
    )
    assert got_properties == properties
    await channel.basic_ack(method.delivery_tag)
    assert (await channel.queue_purge("jobs")).method.message_count == 1
    assert await channel.basic_get("jobs") == (None, None, None)

    await channel.queue_unbind("jobs", "x", routing_key="job.*")
    with pytest.raises(mqstore.UnroutableError):
        await channel.basic_publish("x", "job.c", b"lost", mandatory=True)
    assert (await channel.queue_delete("jobs")).method.message_count == 0
    await channel.exchange_delete("x")
    with pytest.raises(mqstore.NotFoundError):
        await channel.queue_declare("jobs", passive=True)


async def test_connection_and_channel_are_async_context_managers(db_path: str) -> None:
    async with await mqstore.aio.connect(db_path) as connection:
        async with await connection.channel() as channel:
            await channel.queue_declare("q")
            assert channel.is_open
        assert channel.is_closed
        assert connection.is_open
    assert connection.is_closed
    with pytest.raises(mqstore.ConnectionWrongStateError):
        await connection.channel()


# --- async iteration ---------------------------------------------------------------------


async def test_async_for_yields_deliveries_in_order_and_ack_removes_them(
    db_path: str, channel: AsyncChannel
) -> None:
    await publish_all(channel, [b"a", b"b", b"c"])
    got = []
    async with contextlib.aclosing(channel.consume("q")) as deliveries:
        async for delivery in deliveries:
            got.append((delivery.body, delivery.routing_key, delivery.exchange))
            await delivery.ack()
            if len(got) == 3:
                break
    assert got == [(b"a", "q", ""), (b"b", "q", ""), (b"c", "q", "")]
    await channel.connection.close()
    # Nothing was left unacked to come back when the connection closed.
    async with await mqstore.aio.connect(db_path) as other:
        assert await ready(await other.channel()) == 0


async def test_nack_with_requeue_redelivers_with_redelivered_flag_and_delivery_count_header(
    channel: AsyncChannel,
) -> None:
    await channel.basic_publish("", "q", b"m", properties=BasicProperties(headers={"k": "v"}))
    async with contextlib.aclosing(channel.consume("q")) as deliveries:
        [first] = await take(deliveries, 1)
        await first.nack(requeue=True)
        [second] = await take(deliveries, 1)
        await second.ack()
    assert (first.body, first.redelivered, first.delivery_count) == (b"m", False, 1)
    assert first.properties.headers == {"k": "v"}
    assert (second.body, second.redelivered, second.delivery_count) == (b"m", True, 2)
    assert second.properties.headers == {"k": "v", "x-delivery-count": 1}
    assert second.delivery_tag != first.delivery_tag
    assert await ready(channel) == 0


async def test_reject_without_requeue_discards_the_message(channel: AsyncChannel) -> None:
    await publish_all(channel, [b"bad", b"good"])
    async with contextlib.aclosing(channel.consume("q")) as deliveries:
        [bad] = await take(deliveries, 1)
        await bad.reject(requeue=False)
        [good] = await take(deliveries, 1)
        await good.ack()
    assert (bad.body, good.body) == (b"bad", b"good")
    assert good.redelivered is False
    assert await ready(channel) == 0
    await channel.basic_recover()
    assert await channel.basic_get("q") == (None, None, None)


async def test_breaking_out_of_consume_loop_cancels_the_consumer(channel: AsyncChannel) -> None:
    await publish_all(channel, [b"a", b"b"])
    counts_inside = []
    async with contextlib.aclosing(channel.consume("q")) as deliveries:
        async for delivery in deliveries:
            taken = delivery
            counts_inside.append(await consumers(channel))
            break
    assert counts_inside == [1]
    assert await consumers(channel) == 0
    # The delivery taken before the break stays ackable on the channel; the one leased
    # behind it but never yielded is back in the queue for others.
    await taken.ack()
    method, _, body = await channel.basic_get("q")
    assert (body, method.redelivered) == (b"b", True)
    await channel.basic_ack(method.delivery_tag)
    assert await ready(channel) == 0


async def test_basic_consume_calls_an_async_callback_that_awaits_ack(
    channel: AsyncChannel,
) -> None:
    bodies = [b"1", b"2", b"3"]
    got: list[bytes] = []
    all_acked = asyncio.Event()

    async def on_message(ch: AsyncChannel, method: Any, properties: Any, body: bytes) -> None:
        assert ch is channel
        await ch.basic_ack(method.delivery_tag)
        got.append(body)
        if len(got) == len(bodies):
            all_acked.set()

    tag = await channel.basic_consume("q", on_message)
    assert isinstance(tag, str)
    assert await consumers(channel) == 1
    await publish_all(channel, bodies)
    await asyncio.wait_for(all_acked.wait(), WAIT_S)
    await channel.basic_cancel(tag)
    assert got == bodies
    assert await consumers(channel) == 0
    await channel.close()  # would requeue anything unacked
    async with await channel.connection.channel() as other:
        assert await ready(other) == 0


async def test_basic_consume_calls_a_plain_callback_with_auto_ack(channel: AsyncChannel) -> None:
    got: list[tuple[bytes, bool]] = []
    done = asyncio.Event()

    def on_message(ch: AsyncChannel, method: Any, properties: Any, body: bytes) -> None:
        got.append((body, method.redelivered))
        if len(got) == 2:
            done.set()

    tag = await channel.basic_consume("q", on_message, auto_ack=True)
    await publish_all(channel, [b"x", b"y"])
    await asyncio.wait_for(done.wait(), WAIT_S)
    await channel.basic_cancel(tag)
    assert got == [(b"x", False), (b"y", False)]
    await channel.close()
    async with await channel.connection.channel() as other:
        assert await ready(other) == 0


# --- errors ------------------------------------------------------------------------------


async def assert_closed_by(channel: AsyncChannel, reply_code: int) -> None:
    assert channel.is_closed
    with pytest.raises(mqstore.ChannelWrongStateError) as later:
        await channel.basic_publish("", "q", b"after")
    assert str(reply_code) in str(later.value)


async def test_publish_to_missing_exchange_raises_404_and_closes_the_channel(
    connection: AsyncConnection, channel: AsyncChannel
) -> None:
    other = await connection.channel()
    with pytest.raises(mqstore.NotFoundError) as error:
        await channel.basic_publish("no-such-exchange", "q", b"m")
    assert error.value.reply_code == 404
    assert error.value.reply_text == "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"
    assert isinstance(error.value, mqstore.ChannelClosedByBroker)
    await assert_closed_by(channel, 404)
    # A soft error closes only that channel.
    assert other.is_open and connection.is_open
    await other.basic_publish("", "q", b"fine")
    assert await ready(other) == 1


async def test_ack_of_unknown_delivery_tag_raises_406_and_closes_the_channel(
    channel: AsyncChannel,
) -> None:
    with pytest.raises(mqstore.PreconditionFailedError) as error:
        await channel.basic_ack(42)
    assert error.value.reply_code == 406
    assert error.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 42"
    await assert_closed_by(channel, 406)


async def test_acking_a_delivery_twice_raises_406(channel: AsyncChannel) -> None:
    await channel.basic_publish("", "q", b"m")
    async with contextlib.aclosing(channel.consume("q")) as deliveries:
        [delivery] = await take(deliveries, 1)
        await delivery.ack()
        with pytest.raises(mqstore.PreconditionFailedError) as error:
            await delivery.ack()
    assert error.value.reply_code == 406
    assert channel.is_closed


async def _declare(ch: AsyncChannel) -> None:
    await ch.queue_declare("private")


async def _get(ch: AsyncChannel) -> None:
    await ch.basic_get("private")


async def _basic_consume(ch: AsyncChannel) -> None:
    await ch.basic_consume("private", lambda *args: None)


async def _iterate(ch: AsyncChannel) -> None:
    async with contextlib.aclosing(ch.consume("private")) as deliveries:
        await anext(deliveries)


async def _purge(ch: AsyncChannel) -> None:
    await ch.queue_purge("private")


async def _delete(ch: AsyncChannel) -> None:
    await ch.queue_delete("private")


@pytest.mark.parametrize("use", [_declare, _get, _basic_consume, _iterate, _purge, _delete])
async def test_exclusive_queue_used_from_another_connection_raises_405_and_closes_the_channel(
    db_path: str, connection: AsyncConnection, use: Any
) -> None:
    owner = await connection.channel()
    await owner.queue_declare("private", exclusive=True)
    await owner.basic_publish("", "private", b"mine")
    async with await mqstore.aio.connect(db_path) as intruder:
        channel = await intruder.channel()
        with pytest.raises(mqstore.ResourceLockedError) as error:
            await asyncio.wait_for(use(channel), WAIT_S)
        assert error.value.reply_code == 405
        assert "RESOURCE_LOCKED" in error.value.reply_text
        await assert_closed_by(channel, 405)
    # The owner is unaffected.
    assert await ready(owner, "private") == 1


async def test_mandatory_unroutable_publish_raises_and_runs_return_callbacks(
    channel: AsyncChannel,
) -> None:
    await channel.exchange_declare("routes", exchange_type="direct")
    returned: list[tuple[Any, bytes]] = []

    async def on_return(ch: AsyncChannel, method: Any, properties: Any, body: bytes) -> None:
        returned.append((method, body))

    channel.add_on_return_callback(on_return)
    with pytest.raises(mqstore.UnroutableError) as error:
        await channel.basic_publish("routes", "nowhere", b"m", mandatory=True)
    [message] = error.value.messages
    assert (message.method.reply_code, message.method.reply_text) == (312, "NO_ROUTE")
    assert (message.method.exchange, message.method.routing_key, message.body) == (
        "routes",
        "nowhere",
        b"m",
    )
    assert [(m.reply_code, body) for m, body in returned] == [(312, b"m")]
    # Unroutable is not a channel error: the channel stays usable.
    assert channel.is_open
    await channel.basic_publish("routes", "nowhere", b"dropped")  # not mandatory: no error
    await channel.basic_publish("", "q", b"routed", mandatory=True)
    assert await ready(channel) == 1


# --- F17: concurrency through one connection ---------------------------------------------


@pytest.mark.parametrize("durability", ["full", "normal"])
@pytest.mark.parametrize("channels", ["shared", "per-coroutine"])
async def test_100_concurrent_coroutines_publishing_through_one_connection_all_stored(
    db_path: str, durability: str, channels: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    count = 100
    async with await mqstore.aio.connect(db_path, durability=durability) as connection:
        shared = await connection.channel()
        await shared.queue_declare("q")
        barrier = asyncio.Barrier(count)

        async def publisher(i: int) -> None:
            channel = shared if channels == "shared" else await connection.channel()
            await barrier.wait()
            await channel.basic_publish("", "q", f"m{i}")

        results = await asyncio.gather(
            *(publisher(i) for i in range(count)), return_exceptions=True
        )
        assert [r for r in results if r is not None] == []

    # Count them by consuming, on a fresh connection.
    async with await mqstore.aio.connect(db_path) as connection:
        channel = await connection.channel()
        assert await ready(channel) == count
        async with contextlib.aclosing(channel.consume("q", auto_ack=True)) as deliveries:
            got = await take(deliveries, count)
        assert sorted(d.body for d in got) == sorted(f"m{i}".encode() for i in range(count))
        assert await ready(channel) == 0
    assert not [r for r in caplog.records if "within a transaction" in r.getMessage()]


# --- prefetch ----------------------------------------------------------------------------


async def test_async_iterator_with_prefetch_3_leases_only_3_unacked_deliveries(
    db_path: str, channel: AsyncChannel
) -> None:
    bodies = [f"m{i}".encode() for i in range(10)]
    await publish_all(channel, bodies)
    await channel.basic_qos(prefetch_count=3)
    async with contextlib.aclosing(channel.consume("q")) as deliveries:
        # Given a consumer holding 3 unacked deliveries
        held = await take(deliveries, 3)
        # Then it leased no more: another connection's consumer gets all 7 others
        async with await mqstore.aio.connect(db_path) as other:
            other_channel = await other.channel()
            async with contextlib.aclosing(
                other_channel.consume("q", auto_ack=True)
            ) as other_deliveries:
                rest = await take(other_deliveries, 7)
        assert [d.body for d in held] == bodies[:3]
        assert [d.body for d in rest] == bodies[3:]
        for delivery in held:
            await delivery.ack()
    assert await ready(channel) == 0


async def test_async_iterator_with_prefetch_keeps_delivering_while_some_deliveries_are_held(
    channel: AsyncChannel,
) -> None:
    # As in RabbitMQ: a consumer with prefetch_count=3 that holds 2 deliveries unacked
    # (say, waiting for a related message) still receives one more at a time.
    bodies = [f"m{i}".encode() for i in range(6)]
    await publish_all(channel, bodies)
    await channel.basic_qos(prefetch_count=3)
    async with contextlib.aclosing(channel.consume("q")) as deliveries:
        held = await take(deliveries, 2)
        processed = []
        for _ in range(4):
            [delivery] = await take(deliveries, 1)
            processed.append(delivery.body)
            await delivery.ack()
        for delivery in held:
            await delivery.ack()
    assert [d.body for d in held] == bodies[:2]
    assert processed == bodies[2:]
    assert await ready(channel) == 0


# --- sharing a file with the blocking API ------------------------------------------------


def _blocking_publish(path: str, bodies: list[bytes]) -> None:
    params = mqstore.ConnectionParameters(path=path)
    with mqstore.BlockingConnection(params) as connection:
        channel = connection.channel()
        for body in bodies:
            channel.basic_publish("", "q", body)


def _blocking_consume(path: str, count: int) -> list[bytes]:
    params = mqstore.ConnectionParameters(path=path)
    with mqstore.BlockingConnection(params) as connection:
        channel = connection.channel()
        got = []
        for method, _, body in channel.consume("q", inactivity_timeout=WAIT_S):
            assert method is not None, f"nothing within {WAIT_S} s after {got}"
            channel.basic_ack(method.delivery_tag)
            got.append(body)
            if len(got) == count:
                break
        channel.cancel()
        return got


async def test_blocking_publish_wakes_an_async_consumer_on_the_same_file(
    db_path: str, channel: AsyncChannel
) -> None:
    async with contextlib.aclosing(channel.consume("q")) as deliveries:
        waiting = asyncio.ensure_future(anext(deliveries))
        await asyncio.to_thread(_blocking_publish, db_path, [b"from blocking 1"])
        first = await asyncio.wait_for(waiting, WAIT_S)
        await first.ack()
        # The consumer is idle again; a second blocking publish must wake it too.
        waiting = asyncio.ensure_future(anext(deliveries))
        await asyncio.to_thread(_blocking_publish, db_path, [b"from blocking 2"])
        second = await asyncio.wait_for(waiting, WAIT_S)
        await second.ack()
    assert (first.body, second.body) == (b"from blocking 1", b"from blocking 2")


async def test_async_publish_reaches_a_blocking_consumer_on_the_same_file(
    channel: AsyncChannel,
) -> None:
    consumer = asyncio.ensure_future(
        asyncio.to_thread(_blocking_consume, channel.connection.params.path, 2)
    )
    await publish_all(channel, [b"from asyncio 1", b"from asyncio 2"])
    got = await asyncio.wait_for(consumer, WAIT_S + 5)
    assert got == [b"from asyncio 1", b"from asyncio 2"]
    assert await ready(channel) == 0


# --- closing -----------------------------------------------------------------------------


async def test_closing_the_async_connection_requeues_unacked_deliveries(db_path: str) -> None:
    consumer = await mqstore.aio.connect(db_path)
    channel = await consumer.channel()
    await channel.queue_declare("q")
    await publish_all(channel, [b"a", b"b", b"c"])
    deliveries = channel.consume("q")
    held = await take(deliveries, 2)
    await held[0].ack()
    # When the connection closes with b (and maybe c, prefetched) unacked
    await consumer.close()
    assert consumer.is_closed and channel.is_closed
    with pytest.raises(mqstore.ConnectionWrongStateError):
        await consumer.channel()
    # Then another connection gets them back, b marked redelivered
    async with await mqstore.aio.connect(db_path) as other:
        other_channel = await other.channel()
        assert await ready(other_channel) == 2
        method, properties, body = await other_channel.basic_get("q", auto_ack=True)
        assert (body, method.redelivered) == (b"b", True)
        assert properties.headers == {"x-delivery-count": 1}
        method, _, body = await other_channel.basic_get("q", auto_ack=True)
        assert body == b"c"
    # The iterator of a closed channel just ends.
    assert await asyncio.wait_for(anext(deliveries, None), WAIT_S) is None


FORGETFUL_PROGRAM = """
import asyncio
import mqstore.aio

async def main():
    connection = await mqstore.aio.connect({path!r})
    channel = await connection.channel()
    await channel.queue_declare("q")
    await channel.basic_publish("", "q", b"one")
    await channel.basic_publish("", "q", b"two")
    async for delivery in channel.consume("q"):
        print("got", delivery.body.decode(), flush=True)
        break  # no ack, no aclosing, no close
    await channel.basic_consume("q", lambda *args: None)  # a dispatcher left running

asyncio.run(main())
print("exited", flush=True)
"""


def test_asyncio_run_of_a_program_that_never_closes_its_connection_exits_promptly(
    db_path: str,
) -> None:
    program = textwrap.dedent(FORGETFUL_PROGRAM).format(path=db_path)
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", program],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["got one", "exited"]
    assert "Traceback" not in done.stderr
    assert "Task was destroyed" not in done.stderr
