"""Unmodified pika against ``mqstore serve``: the seed, RabbitMQ's six tutorials, confirms,
content framing, and an embedded mqstore client on the same file."""

from __future__ import annotations

import decimal
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime

import pika
import pika.exceptions
import pytest

import mqstore

from ..integration.test_tutorials import BIND_LINE, SEED_CONSUMER, SEED_PRODUCER
from .conftest import ServerProcess

WAIT_S = 15


def run_seed(source: str, port: int, timeout: float) -> subprocess.CompletedProcess:
    """Run a seed program verbatim; only pika's default port is pointed at the test server."""
    prelude = f"import pika.connection; pika.connection.Parameters.DEFAULT_PORT = {port}\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + source],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def seed_consumer(port: int) -> subprocess.Popen:
    prelude = f"import pika.connection; pika.connection.Parameters.DEFAULT_PORT = {port}\n"
    return subprocess.Popen(
        [sys.executable, "-u", "-c", prelude + SEED_CONSUMER],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_seed_as_written_drops_the_message(server: ServerProcess, params) -> None:
    """The seed publishes to 'greeting' without binding 'hello': RabbitMQ drops the message,
    and so does mqstore."""
    with pika.BlockingConnection(params) as conn:
        conn.channel().queue_delete("hello")
    done = run_seed(SEED_PRODUCER, server.port, WAIT_S)
    assert done.returncode == 0, done.stderr
    with pika.BlockingConnection(params) as conn:
        assert conn.channel().queue_declare("hello", passive=True).method.message_count == 0


def test_seed_with_the_binding_delivers(server: ServerProcess, params) -> None:
    with pika.BlockingConnection(params) as conn:
        conn.channel().queue_delete("hello")
    consumer = seed_consumer(server.port)
    try:
        producer = SEED_PRODUCER.replace(
            "\nchannel.basic_publish(", "\n" + BIND_LINE + "channel.basic_publish("
        )
        done = run_seed(producer, server.port, WAIT_S)
        assert done.returncode == 0, done.stderr
        line = consumer.stdout.readline()
        assert line.strip() == "[x] Received b'Hello World!'"
    finally:
        consumer.kill()
        consumer.wait()
        consumer.stdout.close()


# --- the six tutorials --------------------------------------------------------------------


def test_tutorial_1_hello_world(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name)
        channel.basic_publish("", name, b"Hello World!")
        got: list = []

        def callback(ch, method, properties, body):
            got.append(body)
            ch.stop_consuming()

        channel.basic_consume(name, callback, auto_ack=True)
        channel.start_consuming()
        assert got == [b"Hello World!"]


def test_tutorial_2_work_queues_fair_dispatch(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name, durable=True)
        for i in range(10):
            props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
            channel.basic_publish("", name, f"task {i}".encode(), props)
    results: list[list] = [[], []]
    workers = []
    for out in results:
        ready = threading.Event()
        thread = threading.Thread(target=_worker, args=(params, name, out, ready), daemon=True)
        thread.start()
        workers.append(thread)
    for thread in workers:
        thread.join(WAIT_S + 5)
    everything = sorted(body for out in results for body in out)
    assert everything == sorted(f"task {i}".encode() for i in range(10))


def _worker(params, queue: str, out: list, ready: threading.Event) -> None:
    conn = pika.BlockingConnection(params)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=1)
    for method, _props, body in channel.consume(queue, inactivity_timeout=1.0):
        if method is None:
            break
        out.append(body)
        channel.basic_ack(method.delivery_tag)
    channel.cancel()
    conn.close()


def _bound_queue(channel, exchange: str, keys: list[str]) -> str:
    queue = channel.queue_declare("", exclusive=True).method.queue
    for key in keys:
        channel.queue_bind(queue, exchange, routing_key=key)
    return queue


@pytest.mark.parametrize(
    ("kind", "bindings", "published", "expected"),
    [
        ("fanout", [[""], [""]], ["a", "b"], [["a", "b"], ["a", "b"]]),
        (
            "direct",
            [["error"], ["info", "error"]],
            ["info", "error"],
            [["error"], ["info", "error"]],
        ),
        (
            "topic",
            [["*.orange.*"], ["*.*.rabbit", "lazy.#"]],
            ["quick.orange.rabbit", "lazy.brown.fox", "quick.brown.fox", "lazy"],
            [["quick.orange.rabbit"], ["quick.orange.rabbit", "lazy.brown.fox", "lazy"]],
        ),
    ],
    ids=["3-publish-subscribe", "4-routing", "5-topics"],
)
def test_tutorials_3_to_5(params, name, kind, bindings, published, expected) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.exchange_declare(name, exchange_type=kind)
        queues = [_bound_queue(channel, name, keys) for keys in bindings]
        for key in published:
            channel.basic_publish(name, key, key.encode())
        for queue, keys in zip(queues, expected, strict=True):
            got = []
            while True:
                method, _, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                got.append(body.decode())
            assert got == keys


def test_tutorial_6_rpc(params, name) -> None:
    def server_side() -> None:
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.queue_declare(name)
        channel.basic_qos(prefetch_count=1)

        def on_request(ch, method, props, body):
            n = int(body)
            reply = pika.BasicProperties(correlation_id=props.correlation_id)
            ch.basic_publish("", props.reply_to, str(n * n).encode(), reply)
            ch.basic_ack(method.delivery_tag)
            ch.stop_consuming()

        channel.basic_consume(name, on_request)
        ready.set()
        channel.start_consuming()
        conn.close()

    ready = threading.Event()
    thread = threading.Thread(target=server_side, daemon=True)
    thread.start()
    assert ready.wait(WAIT_S)
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        callback_queue = channel.queue_declare("", exclusive=True).method.queue
        corr = str(uuid.uuid4())
        answer: list = []

        def on_response(ch, method, props, body):
            if props.correlation_id == corr:
                answer.append(int(body))

        channel.basic_consume(callback_queue, on_response, auto_ack=True)
        props = pika.BasicProperties(reply_to=callback_queue, correlation_id=corr)
        channel.basic_publish("", name, b"7", props)
        while not answer:
            conn.process_data_events(time_limit=WAIT_S)
        assert answer == [49]
    thread.join(WAIT_S)


# --- confirms and content ---------------------------------------------------------------------


def test_confirms_and_mandatory_unroutable(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare(name)
        channel.basic_publish("", name, b"routed", mandatory=True)
        with pytest.raises(pika.exceptions.UnroutableError) as info:
            channel.basic_publish("", f"{name}-nowhere", b"lost", mandatory=True)
        returned = info.value.messages[0]
        assert returned.method.reply_code == 312
        assert returned.method.reply_text == "NO_ROUTE"
        assert returned.body == b"lost"
        channel.basic_publish("", f"{name}-nowhere", b"dropped")  # not mandatory: just acked
        assert channel.queue_declare(name, passive=True).method.message_count == 1


def test_large_bodies_are_split_at_frame_max_and_empty_bodies_work(server, name) -> None:
    params = pika.ConnectionParameters(host="127.0.0.1", port=server.port, frame_max=4096)
    bodies = [b"", b"x" * 4088, b"y" * 4089, bytes(range(256)) * 1000]
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare(name)
        for body in bodies:
            channel.basic_publish("", name, body)
        got = []
        for method, _, body in channel.consume(name, inactivity_timeout=WAIT_S):
            assert method is not None
            got.append(body)
            channel.basic_ack(method.delivery_tag)
            if len(got) == len(bodies):
                break
        channel.cancel()
        assert got == bodies


def test_properties_pass_through_unchanged(params, name) -> None:
    headers = {
        "int": 2**40,
        "neg": -5,
        "str": "café",
        "bool": True,
        "none": None,
        "list": [1, "two", {"three": 3}],
        "table": {"nested": {"deep": "yes"}},
        "decimal": decimal.Decimal("3.14"),
        "ts": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=3,
        correlation_id="c1",
        reply_to="r1",
        expiration="60000",
        message_id="m1",
        timestamp=1_700_000_000,
        type="t1",
        user_id="guest",
        app_id="a1",
    )
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name)
        channel.basic_publish("", name, b"p", props)
        method, got, _ = channel.basic_get(name)
        assert got.headers == headers
        for field in ("content_type", "correlation_id", "reply_to", "expiration", "timestamp"):
            assert getattr(got, field) == getattr(props, field)
        channel.basic_nack(method.delivery_tag, requeue=True)
        method, again, _ = channel.basic_get(name, auto_ack=True)
        assert method.redelivered
        assert again.headers == {**headers, "x-delivery-count": 1}


def test_embedded_client_and_pika_exchange_messages(server: ServerProcess, params, name) -> None:
    """mqstore's own BlockingConnection on the server's file and a pika client, both ways."""
    embedded = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=server.db))
    try:
        local = embedded.channel()
        local.queue_declare(f"{name}-to-pika")
        local.queue_declare(f"{name}-to-local")
        local.basic_publish(
            "", f"{name}-to-pika", b"from embedded", mqstore.BasicProperties(headers={"k": "v"})
        )
        with pika.BlockingConnection(params) as conn:
            channel = conn.channel()
            _method, props, body = channel.basic_get(f"{name}-to-pika", auto_ack=True)
            assert (body, props.headers) == (b"from embedded", {"k": "v"})
            channel.basic_publish(
                "", f"{name}-to-local", b"from pika", pika.BasicProperties(headers={"n": 1})
            )
        _method, props, body = local.basic_get(f"{name}-to-local", auto_ack=True)
        assert (body, props.headers) == (b"from pika", {"n": 1})
    finally:
        embedded.close()


def test_many_confirmed_publishes_in_flight(params, name) -> None:
    """A pipelining publisher (pika's async API would do the same) gets every confirm."""
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare(name)
        for i in range(200):
            channel.basic_publish("", name, str(i).encode())
        assert channel.queue_declare(name, passive=True).method.message_count == 200


def test_exchange_to_exchange_bindings(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.exchange_declare(f"{name}-front", exchange_type="topic")
        channel.exchange_declare(f"{name}-back", exchange_type="fanout")
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, f"{name}-back")
        channel.exchange_bind(f"{name}-back", f"{name}-front", routing_key="orders.*")
        channel.exchange_bind(f"{name}-front", f"{name}-back")  # a cycle is harmless
        channel.basic_publish(f"{name}-front", "orders.new", b"in")
        channel.basic_publish(f"{name}-front", "users.new", b"not bound")
        method, _, body = channel.basic_get(queue, auto_ack=True)
        # The message keeps the exchange it was published to, as in RabbitMQ.
        assert (body, method.exchange, method.routing_key) == (b"in", f"{name}-front", "orders.new")
        assert channel.basic_get(queue, auto_ack=True)[0] is None
        channel.exchange_unbind(f"{name}-back", f"{name}-front", routing_key="orders.*")
        channel.exchange_unbind(f"{name}-back", f"{name}-front", routing_key="absent")
        channel.basic_publish(f"{name}-front", "orders.new", b"gone")
        assert channel.basic_get(queue, auto_ack=True)[0] is None
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.exchange_bind(f"{name}-back", f"{name}-missing")
        assert info.value.reply_text == f"NOT_FOUND - no exchange '{name}-missing' in vhost '/'"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            conn.channel().exchange_bind("", f"{name}-back")
        assert info.value.reply_code == 403


def test_misc_methods(params, name) -> None:
    """pika's less common calls: recover, nack multiple, purge and delete counts, flow, qos
    global, an empty queue name meaning the last declared queue."""
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=10, global_qos=True)
        assert channel.flow(True) is True
        channel.queue_declare(name)
        for i in range(4):
            channel.basic_publish("", name, str(i).encode())
        tags = [channel.basic_get(name)[0].delivery_tag for _ in range(3)]
        channel.basic_recover(requeue=True)
        tags = [channel.basic_get(name)[0].delivery_tag for _ in range(3)]
        channel.basic_nack(tags[1], multiple=True, requeue=False)  # drops the first two
        channel.basic_reject(tags[2], requeue=True)
        assert channel.queue_purge(name).method.message_count == 2
        channel.basic_publish("", name, b"left")
        channel.queue_declare(name, passive=True)
        assert channel.queue_delete("").method.message_count == 1  # '' = last declared
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            channel.basic_recover(requeue=False)
        assert info.value.reply_code == 540
