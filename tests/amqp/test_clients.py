"""The other Python clients: aio-pika (aiormq) with publisher confirms, and kombu over
py-amqp (what Celery uses)."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import ServerProcess

aio_pika = pytest.importorskip("aio_pika")
kombu = pytest.importorskip("kombu")


async def test_aio_pika_publish_consume_with_confirms(server: ServerProcess, name: str) -> None:
    connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{server.port}/")
    async with connection:
        channel = await connection.channel()  # publisher_confirms=True by default
        await channel.set_qos(prefetch_count=10)
        queue = await channel.declare_queue(name, durable=True)
        exchange = await channel.declare_exchange(f"{name}-x", aio_pika.ExchangeType.TOPIC)
        await queue.bind(exchange, routing_key="a.#")
        for i in range(20):
            # mandatory=True by default: routable publishes must not come back.
            confirmation = await exchange.publish(
                aio_pika.Message(f"m{i}".encode(), headers={"i": i, "f": 0.25}),
                routing_key=f"a.{i}",
            )
            assert confirmation is not None
        got = []
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    got.append((message.body, message.headers["i"], message.headers["f"]))
                if len(got) == 20:
                    break
        assert got == [(f"m{i}".encode(), i, 0.25) for i in range(20)]
        strict = await connection.channel(on_return_raises=True)
        exchange = await strict.get_exchange(f"{name}-x")
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await exchange.publish(aio_pika.Message(b"lost"), routing_key="nowhere")


async def test_aio_pika_reject_requeues(server: ServerProcess, name: str) -> None:
    connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{server.port}/")
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name)
        await channel.default_exchange.publish(aio_pika.Message(b"again"), routing_key=name)
        first = await queue.get(timeout=5)
        await first.reject(requeue=True)
        second = await queue.get(timeout=5)
        assert (second.body, second.redelivered) == (b"again", True)
        await second.ack()
        await asyncio.sleep(0)


def test_kombu_simple_queue(server: ServerProcess, name: str) -> None:
    with kombu.Connection(f"amqp://guest:guest@127.0.0.1:{server.port}//") as conn:
        queue = conn.SimpleQueue(name)
        queue.put({"hello": "world"})
        message = queue.get(block=True, timeout=5)
        assert message.payload == {"hello": "world"}
        message.ack()
        assert queue.qsize() == 0
        queue.close()


def test_kombu_consumer_like_a_celery_worker(server: ServerProcess, name: str) -> None:
    """Celery's shapes: a durable direct exchange, an exclusive auto-delete fanout queue with
    x-expires/x-message-ttl, several queues on one consumer (nowait consumes), prefetch."""
    url = f"amqp://guest:guest@127.0.0.1:{server.port}//"
    with kombu.Connection(url, heartbeat=10) as conn:
        tasks = kombu.Exchange(f"{name}-celery", "direct", durable=True)
        work = kombu.Queue(f"{name}-celery", tasks, routing_key="celery", durable=True)
        pidbox = kombu.Queue(
            f"{name}.pidbox",
            kombu.Exchange(f"{name}-pidbox", "fanout", durable=False),
            exclusive=True,
            auto_delete=True,
            queue_arguments={"x-expires": 10000, "x-message-ttl": 300000},
        )
        got = []

        def on_message(body, message) -> None:
            got.append(body)
            message.ack()

        with conn.channel() as channel:
            consumer = kombu.Consumer(channel, [work, pidbox], callbacks=[on_message])
            consumer.qos(prefetch_count=4)
            consumer.consume()
            producer = kombu.Producer(conn.channel())
            for i in range(5):
                producer.publish({"i": i}, exchange=tasks, routing_key="celery")
            producer.publish({"ping": 1}, exchange=f"{name}-pidbox", routing_key="")
            while len(got) < 6:
                conn.drain_events(timeout=5)
            conn.heartbeat_check()
    assert sorted(map(str, got)) == sorted(map(str, [*({"i": i} for i in range(5)), {"ping": 1}]))
