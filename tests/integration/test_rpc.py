"""Direct reply-to (RabbitMQ's ``amq.rabbitmq.reply-to`` pseudo-queue) and the RPC helper
(mqstore.rpc), through the blocking and asyncio APIs, within and across processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

import mqstore
from mqstore import BasicProperties
from mqstore.rpc import REPLY_TO


def serve(path: str, queue: str, stop: threading.Event, transform=bytes.upper) -> threading.Thread:
    """An RPC server on its own connection and thread: answers with ``transform(body)``."""
    ready = threading.Event()

    def run() -> None:
        with mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path)) as conn:
            ch = conn.channel()
            ch.queue_declare(queue)

            def on_request(ch, method, props, body):
                mqstore.rpc.reply(ch, props, transform(body))
                ch.basic_ack(method.delivery_tag)

            ch.basic_consume(queue, on_request)
            ready.set()
            while not stop.is_set():
                conn.process_data_events(time_limit=0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    return thread


@pytest.fixture
def server(db_path):
    stop = threading.Event()
    thread = serve(db_path, "rpc", stop)
    yield
    stop.set()
    thread.join(10)


# --- the pseudo-queue ----------------------------------------------------------------------


def test_direct_reply_to_by_hand(blocking_connect):
    client = blocking_connect().channel()
    server = blocking_connect().channel()
    server.queue_declare("requests")
    replies = []
    client.basic_consume(REPLY_TO, lambda c, m, p, b: replies.append((p, b)), auto_ack=True)
    client.basic_publish(
        "", "requests", b"ping", BasicProperties(reply_to=REPLY_TO, correlation_id="1")
    )
    _method, props, _body = server.basic_get("requests", auto_ack=True)
    # The server sees the channel's own reply address, not the pseudo-queue's name.
    assert props.reply_to.startswith(REPLY_TO + ".")
    assert props.reply_to != REPLY_TO
    server.basic_publish("", props.reply_to, b"pong", BasicProperties(correlation_id="1"))
    client.connection.process_data_events(time_limit=2)
    assert [(p.correlation_id, b) for p, b in replies] == [("1", b"pong")]


def test_reply_consumer_must_be_auto_ack(blocking_connect):
    ch = blocking_connect().channel()
    with pytest.raises(mqstore.errors.PreconditionFailedError, match="cannot acknowledge"):
        ch.basic_consume(REPLY_TO, lambda *a: None)


def test_publish_with_reply_to_needs_a_reply_consumer(blocking_connect):
    ch = blocking_connect().channel()
    ch.queue_declare("requests")
    with pytest.raises(mqstore.errors.PreconditionFailedError, match="fast reply consumer"):
        ch.basic_publish("", "requests", b"x", BasicProperties(reply_to=REPLY_TO))


def test_one_reply_consumer_per_channel(blocking_connect):
    ch = blocking_connect().channel()
    ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    with pytest.raises(mqstore.errors.PreconditionFailedError, match="already set"):
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)


def test_reply_after_the_consumer_left_is_dropped(blocking_connect):
    client = blocking_connect().channel()
    server = blocking_connect().channel()
    server.queue_declare("requests")
    tag = client.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    client.basic_publish("", "requests", b"x", BasicProperties(reply_to=REPLY_TO))
    _, props, _ = server.basic_get("requests", auto_ack=True)
    client.basic_cancel(tag)
    # The reply queue went with its consumer: the reply is unroutable, as in RabbitMQ.
    with pytest.raises(mqstore.UnroutableError):
        server.basic_publish("", props.reply_to, b"late", mandatory=True)
    with pytest.raises(mqstore.errors.PreconditionFailedError):
        client.basic_publish("", "requests", b"x", BasicProperties(reply_to=REPLY_TO))


def test_reply_queue_goes_with_the_connection(blocking_connect, db_path):
    conn = blocking_connect()
    conn.channel().basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    conn.close()
    import sqlite3

    with sqlite3.connect(db_path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM mq_queues")]
    assert not [n for n in names if n.startswith(REPLY_TO)]


# --- the helper ----------------------------------------------------------------------------


def test_rpc_call_blocking(server, blocking_connect):
    ch = blocking_connect().channel()
    assert mqstore.rpc.call(ch, "", "rpc", b"hello", timeout=5) == b"HELLO"
    assert mqstore.rpc.call(ch, "", "rpc", b"again", timeout=5) == b"AGAIN"
    props, body = mqstore.rpc.call(ch, "", "rpc", b"x", timeout=5, full=True)
    assert body == b"X" and props.correlation_id


def test_rpc_timeout_is_a_clear_timeout_error(blocking_connect):
    ch = blocking_connect().channel()
    ch.queue_declare("nobody-home")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no reply to the RPC call to 'nobody-home'"):
        mqstore.rpc.call(ch, "", "nobody-home", b"x", timeout=0.2)
    assert time.monotonic() - started < 2


def test_rpc_unroutable_fails_at_once(blocking_connect):
    ch = blocking_connect().channel()
    with pytest.raises(mqstore.UnroutableError):
        mqstore.rpc.call(ch, "", "missing", b"x", timeout=5)


def test_late_reply_to_a_timed_out_call_is_dropped(blocking_connect, db_path):
    ch = blocking_connect().channel()
    ch.queue_declare("slow")
    with pytest.raises(TimeoutError):
        mqstore.rpc.call(ch, "", "slow", b"first", timeout=0.1)
    server = blocking_connect().channel()
    _, props, _ = server.basic_get("slow", auto_ack=True)
    mqstore.rpc.reply(server, props, b"late")
    stop = threading.Event()
    thread = serve(db_path, "slow", stop, transform=lambda b: b + b"!")
    try:
        assert mqstore.rpc.call(ch, "", "slow", b"second", timeout=5) == b"second!"
    finally:
        stop.set()
        thread.join(10)


SERVER = r"""
import sys, mqstore
conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=sys.argv[1]))
ch = conn.channel()
ch.queue_declare("rpc-proc")
def on_request(ch, method, props, body):
    mqstore.rpc.reply(ch, props, str(int(body) * 2))
    ch.basic_ack(method.delivery_tag)
ch.basic_consume("rpc-proc", on_request)
print("ready", flush=True)
ch.start_consuming()
"""


def test_rpc_across_processes(db_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, db_path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        with mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db_path)) as conn:
            ch = conn.channel()
            assert [mqstore.rpc.call(ch, "", "rpc-proc", str(i), timeout=10) for i in range(5)] == [
                str(i * 2).encode() for i in range(5)
            ]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_rpc_call_async(server, db_path):
    async def main() -> list[bytes]:
        conn = await mqstore.aio.connect(db_path)
        try:
            ch = await conn.channel()
            calls = [
                mqstore.rpc.call_async(ch, "", "rpc", f"m{i}".encode(), timeout=5)
                for i in range(10)
            ]
            results = await asyncio.gather(*calls)
            with pytest.raises(TimeoutError):
                await ch.queue_declare("void")
                await mqstore.rpc.call_async(ch, "", "void", b"x", timeout=0.1)
            return results
        finally:
            await conn.close()

    results = asyncio.run(asyncio.wait_for(main(), 20))
    assert results == [f"M{i}".encode() for i in range(10)]
