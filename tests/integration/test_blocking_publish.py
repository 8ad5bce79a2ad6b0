"""Publishing through the blocking API: properties, bodies, returns and refusals."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

import mqstore


@pytest.fixture
def conn(blocking_connect):
    return blocking_connect()


@pytest.fixture
def ch(conn):
    channel = conn.channel()
    channel.queue_declare("q")
    return channel


def get_one(channel, queue: str = "q"):
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None, f"queue {queue!r} is empty"
    return properties, body


def count_rows(db_path: str, table: str) -> int:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as ro:
        return ro.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# --- properties -----------------------------------------------------------------------------------


def test_every_basic_properties_field_round_trips_exactly(ch):
    sent = mqstore.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"h": "v"},
        delivery_mode=2,
        priority=7,
        correlation_id="corr-1",
        # Not the direct reply-to pseudo-queue itself: that needs a reply consumer and is
        # rewritten to its address (tests/integration/test_rpc.py).
        reply_to="amq.rabbitmq.reply-to.g2dkAA",
        expiration="60000",
        message_id="msg-42",
        timestamp=1_700_000_000,
        type="order.created",
        user_id="guest",
        app_id="billing",
    )

    ch.basic_publish("", "q", b"{}", sent)
    properties, body = get_one(ch)

    assert body == b"{}"
    assert properties == sent
    assert properties.fields() == sent.fields()
    for name, value in sent.fields().items():
        got = getattr(properties, name)
        assert type(got) is type(value), name
        assert got == value, name


def test_unset_properties_come_back_as_none(ch):
    ch.basic_publish("", "q", b"m")
    properties, _ = get_one(ch)

    assert properties.fields() == {}
    assert properties.headers is None
    assert properties.delivery_mode is None


def test_delivery_mode_enum_is_accepted(ch):
    ch.basic_publish(
        "", "q", b"m", mqstore.BasicProperties(delivery_mode=mqstore.DeliveryMode.Persistent)
    )
    properties, _ = get_one(ch)

    assert properties.delivery_mode == 2


HEADER_VALUES = {
    "str": "text é ✓",
    "empty-str": "",
    "bytes": b"\x00\xff raw",
    "int": 42,
    "negative": -(2**63),
    "big": 2**63 - 1,
    "float": 0.1,
    "float-integral": 2.0,
    "true": True,
    "false": False,
    "none": None,
    "decimal": Decimal("3.14"),
    "decimal-exponent": Decimal("1E+3"),
    "datetime-naive": datetime(2024, 5, 1, 12, 30, 15),
    "datetime-utc": datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
    "datetime-offset": datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=-5))),
    "list": [1, "two", 3.0, None, b"four", [5, [6]], {"seven": 7}],
    "empty-list": [],
    "nested": {"a": {"b": {"c": [1, {"d": Decimal("0.5")}]}}, "e": True},
    "empty-dict": {},
    "looks-tagged": ["M", {"x": 1}],
    "x-delivery-count": "user value on first delivery",
}


def _assert_same_types(got, expected, path="headers"):
    assert type(got) is type(expected), f"{path}: {type(got).__name__} != {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(got) == list(expected), path
        for key in expected:
            _assert_same_types(got[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_same_types(g, e, f"{path}[{i}]")
    elif isinstance(expected, datetime):
        assert got.tzinfo == expected.tzinfo, path


def test_header_values_of_every_type_round_trip_with_identical_types(ch):
    ch.basic_publish("", "q", b"m", mqstore.BasicProperties(headers=HEADER_VALUES))
    properties, _ = get_one(ch)

    assert properties.headers == HEADER_VALUES
    _assert_same_types(properties.headers, HEADER_VALUES)


def test_header_tuple_comes_back_as_list(ch):
    ch.basic_publish("", "q", b"m", mqstore.BasicProperties(headers={"t": (1, 2)}))
    properties, _ = get_one(ch)

    assert properties.headers == {"t": [1, 2]}


def test_datetime_timestamp_round_trips(ch):
    stamp = datetime(2024, 1, 2, 3, 4, 5)
    ch.basic_publish("", "q", b"m", mqstore.BasicProperties(timestamp=stamp))
    properties, _ = get_one(ch)

    assert properties.timestamp == stamp
    assert type(properties.timestamp) is datetime


@pytest.mark.parametrize(
    ("properties", "error", "match"),
    [
        (mqstore.BasicProperties(headers={"o": object()}), TypeError, "header 'o'"),
        (mqstore.BasicProperties(priority=300), ValueError, "'priority' must be in 0..255"),
        (mqstore.BasicProperties(delivery_mode=5), ValueError, "'delivery_mode' must be 1 or 2"),
        (mqstore.BasicProperties(content_type=5), TypeError, "'content_type' must be str"),
    ],
    ids=["header-object", "priority-300", "delivery-mode-5", "content-type-int"],
)
def test_invalid_property_is_refused_client_side_before_storing(ch, properties, error, match):
    with pytest.raises(error, match=match):
        ch.basic_publish("", "q", b"m", properties)

    assert ch.is_open
    assert ch.queue_declare("q", passive=True).method.message_count == 0


# --- bodies ---------------------------------------------------------------------------------------


def test_str_body_is_encoded_as_utf8(ch):
    ch.basic_publish("", "q", "héllo ✓")
    _, body = get_one(ch)

    assert body == "héllo ✓".encode()
    assert type(body) is bytes


@pytest.mark.parametrize("body", [42, {"a": 1}, None, 1.5], ids=["int", "dict", "None", "float"])
def test_non_bytes_body_is_type_error(conn, ch, body):
    with pytest.raises(
        TypeError, match=f"message body must be bytes or str, not {type(body).__name__}"
    ):
        ch.basic_publish("", "q", body)

    assert conn.channel().queue_declare("q", passive=True).method.message_count == 0


def test_empty_body_is_delivered(ch):
    ch.basic_publish("", "q", b"")
    _, body = get_one(ch)

    assert body == b""


def test_binary_body_round_trips(ch):
    payload = bytes(range(256)) * 64
    ch.basic_publish("", "q", payload)
    _, body = get_one(ch)

    assert body == payload


def test_body_larger_than_max_message_size_is_406(blocking_connect):
    ch = blocking_connect(max_message_size=1024).channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"x" * 1024)

    with pytest.raises(mqstore.MessageTooLargeError) as info:
        ch.basic_publish("", "q", b"x" * 1025)
    assert isinstance(info.value, mqstore.PreconditionFailedError)
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        "PRECONDITION_FAILED - message size 1025 is larger than configured max size 1024"
    )


@pytest.mark.parametrize(
    ("expiration", "text"),
    [
        ("abc", "invalid expiration 'abc': no_integer"),
        ("-1", "invalid expiration '-1': {value_negative,-1}"),
    ],
)
def test_invalid_per_message_expiration_is_406(conn, ch, expiration, text):
    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.basic_publish("", "q", b"m", mqstore.BasicProperties(expiration=expiration))
    assert info.value.reply_text == "PRECONDITION_FAILED - " + text
    assert conn.channel().queue_declare("q", passive=True).method.message_count == 0


# --- routing failures -----------------------------------------------------------------------------


def test_publish_to_missing_exchange_is_404_and_closes_the_channel(conn, ch):
    with pytest.raises(mqstore.NotFoundError) as info:
        ch.basic_publish("nope", "q", b"m")
    assert info.value.reply_code == 404
    assert info.value.reply_text == "NOT_FOUND - no exchange 'nope' in vhost '/'"
    assert ch.is_closed
    with pytest.raises(mqstore.ChannelWrongStateError):
        ch.basic_publish("", "q", b"m")
    with pytest.raises(mqstore.ChannelWrongStateError):
        ch.basic_get("q")
    assert conn.is_open


def test_mandatory_unroutable_publish_raises_with_the_returned_message(ch):
    props = mqstore.BasicProperties(message_id="m1")

    with pytest.raises(mqstore.UnroutableError) as info:
        ch.basic_publish("amq.direct", "no-binding", b"lost", props, mandatory=True)
    [returned] = info.value.messages
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert (returned.method.exchange, returned.method.routing_key) == ("amq.direct", "no-binding")
    assert returned.properties == props
    assert returned.body == b"lost"
    assert ch.is_open


def test_channel_stays_usable_after_an_unroutable_mandatory_publish(ch):
    with pytest.raises(mqstore.UnroutableError):
        ch.basic_publish("", "missing-queue", b"lost", mandatory=True)

    ch.basic_publish("", "q", b"after", mandatory=True)

    assert get_one(ch)[1] == b"after"


def test_return_callback_gets_channel_method_properties_and_body(ch):
    returned = []
    ch.add_on_return_callback(lambda *args: returned.append(args))
    props = mqstore.BasicProperties(correlation_id="c")

    with pytest.raises(mqstore.UnroutableError):
        ch.basic_publish("", "missing-queue", "lost", props, mandatory=True)

    [(channel, method, properties, body)] = returned
    assert channel is ch
    assert (method.reply_code, method.exchange, method.routing_key) == (312, "", "missing-queue")
    assert properties == props
    assert body == b"lost"


def test_routable_mandatory_publish_calls_no_return_callback(ch):
    returned = []
    ch.add_on_return_callback(lambda *args: returned.append(args))

    ch.basic_publish("", "q", b"m", mandatory=True)

    assert returned == []
    assert get_one(ch)[1] == b"m"


def test_non_mandatory_unroutable_publish_is_dropped_silently(db_path, conn, ch):
    returned = []
    ch.add_on_return_callback(lambda *args: returned.append(args))

    ch.basic_publish("amq.topic", "nobody.listens", b"dropped")
    ch.basic_publish("", "missing-queue", b"dropped")
    conn.close()

    assert returned == []
    assert count_rows(db_path, "mq_messages") == 0
    assert count_rows(db_path, "mq_entries") == 0


def test_seed_program_publish_to_unbound_greeting_exchange_is_dropped(db_path, blocking_connect):
    # Given the seed producer: queue 'hello', exchange 'greeting' with no binding.
    connection = blocking_connect()
    channel = connection.channel()
    channel.queue_declare(queue="hello")
    channel.exchange_declare(exchange="greeting")
    channel.basic_publish(exchange="greeting", routing_key="hello", body="Hello World!")
    connection.close()

    # Then 'hello' stays empty: a direct exchange routes only through bindings.
    check = blocking_connect().channel()
    assert check.queue_declare("hello", passive=True).method.message_count == 0
    assert check.basic_get("hello") == (None, None, None)


def test_message_routed_to_ten_queues_stores_its_body_once(db_path, conn):
    ch = conn.channel()
    ch.exchange_declare("fan", "fanout")
    for i in range(10):
        ch.queue_declare(f"q{i}")
        ch.queue_bind(f"q{i}", "fan")

    ch.basic_publish("fan", "", b"x" * 10_000)
    conn.close()

    assert count_rows(db_path, "mq_messages") == 1
    assert count_rows(db_path, "mq_entries") == 10


def test_message_routed_to_one_queue_is_one_row(db_path, conn):
    """The common case costs one row (the entry holds the message): no mq_messages row."""
    ch = conn.channel()
    ch.queue_declare("solo")
    ch.basic_publish("", "solo", b"alone", mqstore.BasicProperties(message_id="m-1"))
    conn.close()

    assert count_rows(db_path, "mq_messages") == 0
    assert count_rows(db_path, "mq_entries") == 1


def test_each_queue_of_a_fanout_gets_its_own_copy_to_ack(conn):
    ch = conn.channel()
    ch.exchange_declare("fan", "fanout")
    for name in ("a", "b"):
        ch.queue_declare(name)
        ch.queue_bind(name, "fan")
    ch.basic_publish("fan", "", b"m")

    method_a, _, body_a = ch.basic_get("a")
    ch.basic_ack(method_a.delivery_tag)
    method_b, _, body_b = ch.basic_get("b")

    assert body_a == body_b == b"m"
    assert method_b is not None


def test_confirm_delivery_is_accepted_and_publishes_still_work(ch):
    ch.confirm_delivery()
    ch.basic_publish("", "q", b"m")

    assert get_one(ch)[1] == b"m"


def test_priority_queue_delivers_higher_priority_first(ch):
    ch.queue_declare("p", arguments={"x-max-priority": 5})
    for body, priority in ((b"low", 1), (b"none", None), (b"high", 5), (b"capped", 9)):
        ch.basic_publish("", "p", body, mqstore.BasicProperties(priority=priority))

    bodies = [get_one(ch, "p")[1] for _ in range(4)]

    assert bodies == [b"high", b"capped", b"low", b"none"]
