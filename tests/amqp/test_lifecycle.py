"""What happens around a connection's life: requeue on a killed client, broker-side consumer
cancellation, prefetch, and a clean server shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

from .conftest import ServerProcess, start_server

WAIT_S = 15


def test_killed_client_deliveries_are_redelivered(server: ServerProcess, params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name, durable=True)
        for i in range(3):
            channel.basic_publish("", name, f"job {i}".encode())
    holder = textwrap.dedent(
        f"""
        import pika, sys
        conn = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', {server.port}))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=2)
        got = 0
        for method, props, body in ch.consume({name!r}):
            got += 1
            if got == 2:
                print('holding', flush=True)
                sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "holding"
        with pika.BlockingConnection(params) as conn:
            channel = conn.channel()
            assert channel.queue_declare(name, passive=True).method.message_count == 1
            proc.kill()  # SIGKILL: no Close, no ack
            proc.wait()
            seen = []
            for method, _, body in channel.consume(name, inactivity_timeout=WAIT_S):
                assert method is not None, f"only {seen} came back"
                seen.append((body, method.redelivered))
                channel.basic_ack(method.delivery_tag)
                if len(seen) == 3:
                    break
            channel.cancel()
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert sorted(seen) == [(b"job 0", True), (b"job 1", True), (b"job 2", False)]


def test_closed_channel_requeues_and_prefetch_is_respected(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name)
        for i in range(5):
            channel.basic_publish("", name, str(i).encode())
        consumer = conn.channel()
        consumer.basic_qos(prefetch_count=2)
        got = []
        consumer.basic_consume(name, lambda ch, m, p, b: got.append(b))
        deadline = time.monotonic() + WAIT_S
        while len(got) < 2 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        conn.process_data_events(time_limit=0.3)
        assert got == [b"0", b"1"]  # prefetch 2: no third delivery without an ack
        consumer.close()
        method, _, body = channel.basic_get(name, auto_ack=True)
        assert (body, method.redelivered) == (b"0", True)


def test_deleting_a_queue_cancels_its_consumers(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name)
        cancelled = []
        channel.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        tag = channel.basic_consume(name, lambda *a: None)
        with pika.BlockingConnection(params) as other:
            other.channel().queue_delete(name)
        deadline = time.monotonic() + WAIT_S
        while not cancelled and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert cancelled == [tag]
        assert channel.is_open


def test_sigterm_closes_clients_with_320_and_keeps_messages(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        params = pika.ConnectionParameters(host="127.0.0.1", port=srv.port)
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare("kept", durable=True)
        channel.basic_publish("", "kept", b"survives")
        channel.basic_consume("kept", lambda *a: None)  # holds it unacked
        conn.process_data_events(time_limit=0.3)
        srv.proc.send_signal(signal.SIGTERM)
        error = None
        try:
            conn.process_data_events(time_limit=WAIT_S)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            error = exc
        assert error is not None and error.reply_code == 320
        assert error.reply_text.startswith("CONNECTION_FORCED")
        assert srv.proc.wait(WAIT_S) == 0
    finally:
        srv.stop(signal.SIGKILL)
    srv2 = start_server(tmp_path)
    try:
        params = pika.ConnectionParameters(host="127.0.0.1", port=srv2.port)
        with pika.BlockingConnection(params) as conn:
            method, _, body = conn.channel().basic_get("kept", auto_ack=True)
            assert (body, method.redelivered) == (b"survives", True)
    finally:
        assert srv2.stop() == 0


def test_client_that_stops_heartbeating_is_dropped_and_requeued(raw, params, name) -> None:
    from pamqp import commands

    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name)
        channel.basic_publish("", name, b"held")
    raw.handshake(heartbeat=1)
    raw.open_channel(1)
    raw.send_method(1, commands.Basic.Consume(queue=name, consumer_tag="c"))
    raw.expect(commands.Basic.ConsumeOk)
    raw.expect(commands.Basic.Deliver)
    # Now silent: no heartbeats, no ack. The server drops it after two missed heartbeats.
    assert raw.is_closed(within=5)
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        deadline = time.monotonic() + WAIT_S
        method = None
        while method is None and time.monotonic() < deadline:
            method, _, body = channel.basic_get(name, auto_ack=True)
        assert method is not None and (body, method.redelivered) == (b"held", True)


def test_exclusive_queue_dies_with_its_connection_and_acks_before_close_count(params, name) -> None:
    conn = pika.BlockingConnection(params)
    channel = conn.channel()
    exclusive = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_declare(name)
    channel.basic_publish("", name, b"done")
    method, _, _ = channel.basic_get(name)
    channel.basic_ack(method.delivery_tag)
    conn.close()  # the ack is queued just before Close: it must still count
    with pika.BlockingConnection(params) as other:
        channel = other.channel()
        assert channel.queue_declare(name, passive=True).method.message_count == 0
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.queue_declare(exclusive, passive=True)
        assert info.value.reply_code == 404


def test_pika_asyncio_adapter(server: ServerProcess, name) -> None:
    import asyncio

    from pika.adapters.asyncio_connection import AsyncioConnection

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[bytes]] = loop.create_future()
        got: list[bytes] = []

        def on_message(ch, method, props, body) -> None:
            got.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(got) == 3:
                ch.connection.close()

        def on_channel(ch) -> None:
            def on_declared(_frame) -> None:
                for i in range(3):
                    ch.basic_publish("", name, f"a{i}".encode())
                ch.basic_consume(name, on_message)

            ch.queue_declare(name, callback=on_declared)

        params = pika.ConnectionParameters(host="127.0.0.1", port=server.port)
        AsyncioConnection(
            params,
            on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
            on_open_error_callback=lambda c, e: done.set_exception(RuntimeError(e)),
            on_close_callback=lambda c, e: done.done() or done.set_result(got),
            custom_ioloop=loop,
        )
        return await asyncio.wait_for(done, WAIT_S)

    assert asyncio.run(main()) == [b"a0", b"a1", b"a2"]


def test_consumer_timeout_closes_the_channel_with_406(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name, arguments={"x-consumer-timeout": 500})
        channel.basic_publish("", name, b"slow")
        got = []
        closed = []
        channel._impl.add_on_close_callback(lambda _ch, reason: closed.append(reason))
        channel.basic_consume(name, lambda ch, m, p, b: got.append(m.delivery_tag))
        deadline = time.monotonic() + WAIT_S
        while not closed and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert got == [1]
        assert closed[0].reply_code == 406
        assert closed[0].reply_text.startswith(
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. "
            "Timeout value used: 500 ms."
        )
        method, _, body = conn.channel().basic_get(name, auto_ack=True)
        assert (body, method.redelivered) == (b"slow", True)


def test_disk_alarm_blocks_publishers_not_consumers(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--disk-free-limit", str(10**18))  # never enough: blocked
    try:
        params = pika.ConnectionParameters(
            host="127.0.0.1", port=srv.port, blocked_connection_timeout=1
        )
        with pika.BlockingConnection(params) as conn:
            conn.channel().queue_declare("q")  # non-publishing work goes on
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.confirm_delivery()
        # pika times a blocked connection out only after the server said Connection.Blocked.
        with pytest.raises(pika.exceptions.ConnectionBlockedTimeout):
            channel.basic_publish("", "q", b"waits")
    finally:
        assert srv.stop() == 0


async def test_publisher_resumes_when_the_alarm_clears(tmp_path: Path) -> None:
    import asyncio

    aio_pika = pytest.importorskip("aio_pika")
    from mqstore.amqp import Server, ServerConfig

    server = Server(ServerConfig(port=0, db=str(tmp_path / "b.db"), disk_free_limit=0))
    await server.start()
    try:
        connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{server.port}/")
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue("q")
            server.set_blocked(True)
            publish = asyncio.ensure_future(
                channel.default_exchange.publish(aio_pika.Message(b"later"), routing_key="q")
            )
            await asyncio.sleep(0.5)
            assert not publish.done()
            server.set_blocked(False)
            await asyncio.wait_for(publish, 10)
            message = await (await channel.get_queue("q")).get(timeout=5)
            assert message.body == b"later"
            await message.ack()
    finally:
        await server.stop()


def test_configured_users_and_vhosts_as_separate_files(tmp_path: Path) -> None:
    dev = tmp_path / "dev.db"
    srv = start_server(tmp_path, "--user", "alice:s3cret", "--vhost", f"dev={dev}")
    try:

        def connect(user: str, password: str, vhost: str = "/") -> pika.BlockingConnection:
            creds = pika.PlainCredentials(user, password)
            return pika.BlockingConnection(
                pika.ConnectionParameters(
                    host="127.0.0.1", port=srv.port, virtual_host=vhost, credentials=creds
                )
            )

        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            connect("guest", "guest")  # users are configured: no default guest
        with connect("alice", "s3cret") as conn:
            channel = conn.channel()
            channel.queue_declare("only-in-root")
        with connect("alice", "s3cret", "dev") as conn:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                conn.channel().queue_declare("only-in-root", passive=True)
            assert info.value.reply_code == 404
        assert dev.exists()
    finally:
        assert srv.stop() == 0
