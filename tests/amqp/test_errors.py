"""RabbitMQ's exact answer to each bad input (RELIABILITY.md section 3), over the wire.

Channel errors close the channel (Channel.Close with code, text, class and method ids) and
leave the connection usable; connection errors close the connection. No bad input ever
stops the server from serving the next client.
"""

from __future__ import annotations

import random
import struct

import pika
import pika.exceptions
import pytest
from pamqp import commands, frame

from .conftest import RawClient, ServerProcess, server_alive


def closed_by(channel_call, *args, **kwargs) -> pika.exceptions.ChannelClosedByBroker:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel_call(*args, **kwargs)
    return info.value


# --- channel errors, through pika ----------------------------------------------------------


def test_404_passive_declare_then_connection_still_usable(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        err = closed_by(channel.queue_declare, name, passive=True)
        assert (err.reply_code, err.reply_text) == (
            404,
            f"NOT_FOUND - no queue '{name}' in vhost '/'",
        )
        err = closed_by(conn.channel().exchange_declare, name, passive=True)
        assert err.reply_text == f"NOT_FOUND - no exchange '{name}' in vhost '/'"
        assert conn.channel().queue_declare(name).method.queue == name


def test_404_publish_to_missing_exchange(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        err = closed_by(channel.basic_publish, name, "k", b"x")
        assert err.reply_code == 404
        assert "no exchange" in err.reply_text


def test_403_reserved_prefix_and_default_exchange(params) -> None:
    with pika.BlockingConnection(params) as conn:
        err = closed_by(conn.channel().queue_declare, "amq.nope")
        assert (err.reply_code, err.reply_text) == (
            403,
            "ACCESS_REFUSED - queue name 'amq.nope' contains reserved prefix 'amq.*'",
        )
        err = closed_by(conn.channel().exchange_delete, "amq.direct")
        assert err.reply_code == 403
        err = closed_by(conn.channel().queue_bind, "q", "")
        assert err.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"


def test_405_exclusive_queue_of_another_connection(params, name) -> None:
    with pika.BlockingConnection(params) as owner, pika.BlockingConnection(params) as other:
        owner.channel().queue_declare(name, exclusive=True)
        err = closed_by(other.channel().queue_declare, name, passive=True)
        assert err.reply_code == 405
        assert err.reply_text.startswith("RESOURCE_LOCKED - cannot obtain exclusive access")
        err = closed_by(other.channel().basic_get, name)
        assert err.reply_code == 405


def test_406_inequivalent_redeclare_and_unknown_delivery_tag(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        conn.channel().queue_declare(name, durable=True)
        err = closed_by(conn.channel().queue_declare, name, durable=False)
        assert err.reply_text == (
            f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost "
            "'/': received 'false' but current is 'true'"
        )
        channel = conn.channel()
        channel.basic_ack(999)
        err = closed_by(channel.queue_declare, name, durable=True)  # the next sync call sees it
        assert (err.reply_code, err.reply_text) == (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 999",
        )


def test_406_queue_delete_if_empty_and_tx_commit_without_select(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name)
        channel.basic_publish("", name, b"x")
        err = closed_by(channel.queue_delete, name, if_empty=True)
        assert err.reply_text == f"PRECONDITION_FAILED - queue '{name}' in vhost '/' not empty"
        err = closed_by(conn.channel().tx_commit)
        assert (err.reply_code, err.reply_text) == (
            406,
            "PRECONDITION_FAILED - channel is not transactional",
        )


def test_406_unknown_exchange_type_as_rabbitmq_4(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        err = closed_by(conn.channel().exchange_declare, name, exchange_type="nope")
        assert (err.reply_code, err.reply_text) == (
            406,
            "PRECONDITION_FAILED - unknown exchange type 'nope'",
        )


def test_406_invalid_expiration(params, name) -> None:
    with pika.BlockingConnection(params) as conn:
        channel = conn.channel()
        channel.queue_declare(name)
        channel.basic_publish("", name, b"x", pika.BasicProperties(expiration="abc"))
        err = closed_by(channel.queue_declare, name)
        assert err.reply_text == "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"


def test_channel_close_carries_class_and_method(raw: RawClient, name: str) -> None:
    raw.handshake()
    raw.open_channel(1)
    raw.send_method(1, commands.Queue.Declare(queue=name, passive=True))
    close = raw.expect(commands.Channel.Close)
    assert (close.reply_code, close.class_id, close.method_id) == (404, 50, 10)
    # Until CloseOk, everything else on the channel is discarded.
    raw.send_method(1, commands.Queue.Declare(queue=name))
    raw.send_method(1, commands.Channel.CloseOk())
    raw.open_channel(1)  # the number is free again
    raw.send_method(1, commands.Queue.Declare(queue=name, passive=True))
    assert raw.expect(commands.Channel.Close).reply_code == 404  # the discarded declare did nothing


# --- connection errors -----------------------------------------------------------------------


def connection_close(raw: RawClient) -> commands.Connection.Close:
    while True:
        _, obj = raw.recv()
        if isinstance(obj, commands.Connection.Close):
            return obj


def test_530_reused_consumer_tag(raw: RawClient, name: str) -> None:
    raw.handshake()
    raw.open_channel(1)
    raw.send_method(1, commands.Queue.Declare(queue=name))
    raw.expect(commands.Queue.DeclareOk)
    raw.send_method(1, commands.Basic.Consume(queue=name, consumer_tag="t1"))
    raw.expect(commands.Basic.ConsumeOk)
    raw.send_method(1, commands.Basic.Consume(queue=name, consumer_tag="t1"))
    close = connection_close(raw)
    assert (close.reply_code, close.reply_text) == (
        530,
        "NOT_ALLOWED - attempt to reuse consumer tag 't1'",
    )
    assert (close.class_id, close.method_id) == (60, 20)
    raw.send_method(0, commands.Connection.CloseOk())
    assert raw.is_closed()


def test_540_immediate(raw: RawClient, name: str) -> None:
    raw.handshake()
    raw.open_channel(1)
    raw.send_method(1, commands.Basic.Publish(exchange="", routing_key=name, immediate=True))
    raw.send_content(1, b"x")
    close = connection_close(raw)
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - immediate=true")
    assert (close.class_id, close.method_id) == (60, 40)


def test_540_prefetch_size(params) -> None:
    conn = pika.BlockingConnection(params)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.channel().basic_qos(prefetch_size=1)
    assert info.value.reply_code == 540
    assert info.value.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (1)"


def test_504_second_channel_open_and_unopened_channel(raw: RawClient) -> None:
    raw.handshake()
    raw.open_channel(1)
    raw.send_method(1, commands.Channel.Open())
    close = connection_close(raw)
    assert (close.reply_code, close.reply_text) == (
        504,
        "CHANNEL_ERROR - second 'channel.open' seen",
    )
    other = raw.make()
    other.handshake()
    other.send_method(7, commands.Queue.Declare(queue="x"))
    close = connection_close(other)
    assert (close.reply_code, close.reply_text) == (504, "CHANNEL_ERROR - expected 'channel.open'")


def test_505_content_header_without_publish(raw: RawClient) -> None:
    raw.handshake()
    raw.open_channel(1)
    raw.send_content(1, b"orphan")
    assert connection_close(raw).reply_code == 505


def test_501_frame_too_large(raw: RawClient, server: ServerProcess) -> None:
    raw.handshake(frame_max=4096)
    raw.open_channel(1)
    raw.send_method(1, commands.Basic.Publish(exchange="", routing_key="x"))
    raw.send(frame.marshal(__import__("pamqp").header.ContentHeader(0, 10000), 1))
    raw.send(struct.pack(">BHI", 3, 1, 10000) + b"x" * 10000 + b"\xce")
    close = connection_close(raw)
    assert close.reply_code == 501
    assert "frame_too_large" in close.reply_text
    assert raw.is_closed()
    assert server_alive(server)


def test_501_bad_frame_end(raw: RawClient, server: ServerProcess) -> None:
    raw.handshake()
    good = frame.marshal(commands.Channel.Open(), 1)
    raw.send(good[:-1] + b"\x00")
    close = connection_close(raw)
    assert (close.reply_code, close.reply_text) == (
        501,
        "FRAME_ERROR - {invalid_frame_end_marker,0}",
    )
    assert raw.is_closed()
    assert server_alive(server)


def test_unknown_method_is_a_connection_error(raw: RawClient, server: ServerProcess) -> None:
    raw.handshake()
    raw.open_channel(1)
    payload = struct.pack(">HH", 60, 250)
    raw.send(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
    assert connection_close(raw).reply_code == 540
    assert server_alive(server)


def test_wrong_protocol_header_gets_ours(raw: RawClient, server: ServerProcess) -> None:
    raw.send(b"GET / HTTP/1.1\r\n\r\n")
    data = raw.sock.recv(64)
    assert data == b"AMQP\x00\x00\x09\x01"
    assert raw.is_closed()
    assert server_alive(server)


def test_garbage_and_mutated_frames_never_hurt_other_clients(
    raw: RawClient, server: ServerProcess, params, name: str
) -> None:
    """A bystander keeps working while clients send random bytes and mutated frames."""
    bystander = pika.BlockingConnection(params)
    channel = bystander.channel()
    channel.queue_declare(name)
    rng = random.Random(4)
    valid = [
        frame.marshal(commands.Channel.Open(), 1),
        frame.marshal(commands.Queue.Declare(queue="fuzz"), 1),
        frame.marshal(commands.Basic.Publish(exchange="", routing_key="fuzz"), 1),
        frame.marshal(commands.Basic.Qos(prefetch_count=3), 1),
    ]
    for round_ in range(60):
        client = raw.make()
        if round_ % 3 == 0:
            client.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        else:
            client.handshake()
            data = bytearray(b"".join(valid))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            client.send(bytes(data))
        client.sock.settimeout(0.3)
        try:
            client.sock.recv(4096)
        except OSError:
            pass
        client.close()
        channel.basic_publish("", name, f"{round_}".encode())
    assert channel.queue_declare(name, passive=True).method.message_count == 60
    bystander.close()
    assert server_alive(server)


# --- handshake --------------------------------------------------------------------------------


def test_bad_login_is_403(server: ServerProcess) -> None:
    creds = pika.PlainCredentials("guest", "wrong")
    params = pika.ConnectionParameters(host="127.0.0.1", port=server.port, credentials=creds)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        pika.BlockingConnection(params)
    assert "ACCESS_REFUSED" in str(info.value)


def test_unknown_vhost_is_530(server: ServerProcess) -> None:
    params = pika.ConnectionParameters(host="127.0.0.1", port=server.port, virtual_host="nope")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        pika.BlockingConnection(params)
    assert "NOT_ALLOWED - vhost nope not found" in str(info.value)


def test_amqplain_login(server: ServerProcess) -> None:
    import amqp

    conn = amqp.Connection(f"127.0.0.1:{server.port}", login_method="AMQPLAIN")
    conn.connect()
    assert conn.channel().queue_declare("", exclusive=True).queue.startswith("amq.gen-")
    conn.close()


def test_silent_client_is_dropped_after_two_heartbeats(raw: RawClient) -> None:
    raw.handshake(heartbeat=1)
    # The server sends heartbeats itself ...
    assert raw.recv(skip_heartbeats=False) == (0, "heartbeat")
    # ... and drops a client that sends nothing for two intervals.
    assert raw.is_closed(within=5)


def test_501_malformed_utf8_name(raw: RawClient) -> None:
    raw.handshake()
    raw.open_channel(1)
    good = frame.marshal(commands.Queue.Declare(queue="abc"), 1)
    at = good.index(b"abc")
    raw.send(good[:at] + b"\xff\xfe\xfd" + good[at + 3 :])
    close = connection_close(raw)
    assert (close.reply_code, close.reply_text) == (
        501,
        "FRAME_ERROR - Malformed UTF-8 in shortstr",
    )


def test_pipelined_publishes_get_coalesced_confirms_in_order(raw: RawClient, name: str) -> None:
    raw.handshake()
    raw.open_channel(1)
    raw.send_method(1, commands.Queue.Declare(queue=name))
    raw.expect(commands.Queue.DeclareOk)
    raw.send_method(1, commands.Confirm.Select())
    raw.expect(commands.Confirm.SelectOk)
    data = b""
    for i in range(300):
        data += frame.marshal(commands.Basic.Publish(exchange="", routing_key=name), 1)
        data += frame.marshal(__import__("pamqp").header.ContentHeader(0, 1), 1)
        data += struct.pack(">BHI", 3, 1, 1) + bytes([i % 256]) + b"\xce"
    raw.send(data)
    acked, frames = 0, 0
    while acked < 300:
        ack = raw.expect(commands.Basic.Ack)
        assert ack.delivery_tag > acked
        assert ack.multiple or ack.delivery_tag == acked + 1
        acked, frames = ack.delivery_tag, frames + 1
    assert acked == 300
    assert frames < 300  # group commits confirmed with multiple=True
