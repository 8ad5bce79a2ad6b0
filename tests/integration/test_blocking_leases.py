"""Leases, fencing, restart and the error surface of the blocking API.

Lease expiry is driven by a FakeClock; the one real-time test is lease renewal by a live
connection, where the passing of time is the behaviour under test.
"""

from __future__ import annotations

import inspect

import pytest

import mqstore
from mqstore import errors


@pytest.fixture
def pair(blocking_connect, fake_clock):
    """Two connections on one engine (same file, same fake clock) and a queue whose
    leases last 1000 ms."""
    a = blocking_connect(clock=fake_clock)
    b = blocking_connect(clock=fake_clock)
    ch_a, ch_b = a.channel(), b.channel()
    ch_a.queue_declare("q", arguments={"x-visibility-timeout": 1000})
    ch_a.basic_publish("", "q", b"m")
    return ch_a, ch_b


def ready(channel, queue: str = "q") -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


# --- lease expiry and fencing ---------------------------------------------------------------------


def test_expired_lease_is_redelivered_to_another_connection(pair, fake_clock):
    ch_a, ch_b = pair
    first, _, _ = ch_a.basic_get("q")
    assert ch_b.basic_get("q") == (None, None, None)

    fake_clock.advance(2000)
    second, props, body = ch_b.basic_get("q")

    assert first.delivery_count == 1
    assert body == b"m"
    assert second.redelivered is True
    assert second.delivery_count == 2
    assert props.headers == {"x-delivery-count": 1}


def test_lease_is_kept_until_its_deadline(pair, fake_clock):
    ch_a, ch_b = pair
    ch_a.basic_get("q")

    fake_clock.advance(999)

    assert ch_b.basic_get("q") == (None, None, None)


def test_late_ack_after_lease_loss_is_refused_and_spares_the_new_delivery(
    pair, fake_clock, blocking_connect
):
    ch_a, ch_b = pair
    old, _, _ = ch_a.basic_get("q")
    fake_clock.advance(2000)
    new, _, _ = ch_b.basic_get("q")

    with pytest.raises(mqstore.LeaseLostError) as info:
        ch_a.basic_ack(old.delivery_tag)
    assert isinstance(info.value, mqstore.PreconditionFailedError)
    assert info.value.reply_code == 406
    assert "lease lost" in info.value.reply_text
    assert ch_a.is_closed

    # B still holds its delivery: nobody else can take it, and B's ack works.
    watcher = blocking_connect(clock=fake_clock).channel()
    assert watcher.basic_get("q") == (None, None, None)
    ch_b.basic_ack(new.delivery_tag)
    fake_clock.advance(5000)
    assert watcher.basic_get("q") == (None, None, None)


def test_multiple_ack_with_one_lost_lease_names_it_and_spares_its_new_delivery(
    blocking_connect, fake_clock
):
    """An ack of many deliveries is one statement; the one whose lease was lost (now leased
    elsewhere) is refused by name and its new holder keeps it; the others are acked."""
    a = blocking_connect(clock=fake_clock).channel()
    b = blocking_connect(clock=fake_clock).channel()
    a.queue_declare("q", arguments={"x-visibility-timeout": 1000})
    a.basic_publish_batch("", "q", [b"0", b"1", b"2"])
    first, _, _ = a.basic_get("q")
    fake_clock.advance(2000)  # first's lease expires ...
    taken, _, body = b.basic_get("q")  # ... and b holds it now
    assert body == b"0"
    rest = [a.basic_get("q")[0] for _ in range(2)]

    with pytest.raises(mqstore.LeaseLostError) as info:
        a.basic_ack(rest[-1].delivery_tag, multiple=True)
    assert f"delivery tag {first.delivery_tag} lease lost" in info.value.reply_text

    watcher = blocking_connect(clock=fake_clock).channel()
    assert watcher.basic_get("q") == (None, None, None)  # 1 and 2 acked, 0 held by b
    b.basic_ack(taken.delivery_tag)
    fake_clock.advance(5000)
    assert watcher.basic_get("q") == (None, None, None)


@pytest.mark.parametrize(
    "settle",
    [
        lambda ch, tag: ch.basic_nack(tag, requeue=True),
        lambda ch, tag: ch.basic_reject(tag, requeue=True),
        lambda ch, tag: ch.basic_nack(tag, requeue=False),
    ],
    ids=["nack-requeue", "reject-requeue", "nack-drop"],
)
def test_late_nack_after_lease_loss_is_refused_and_changes_nothing(
    pair, fake_clock, blocking_connect, settle
):
    ch_a, ch_b = pair
    old, _, _ = ch_a.basic_get("q")
    fake_clock.advance(2000)
    new, _, _ = ch_b.basic_get("q")

    with pytest.raises(mqstore.LeaseLostError):
        settle(ch_a, old.delivery_tag)

    watcher = blocking_connect(clock=fake_clock).channel()
    assert watcher.basic_get("q") == (None, None, None)  # not requeued behind B's back
    ch_b.basic_nack(new.delivery_tag, requeue=True)
    again, _, body = watcher.basic_get("q")
    assert (body, again.delivery_count) == (b"m", 3)  # nor dropped


def test_expired_consumer_delivery_is_redelivered_and_its_ack_refused(blocking_connect, fake_clock):
    conn_a = blocking_connect(clock=fake_clock)
    ch_a = conn_a.channel()
    ch_a.queue_declare("q", arguments={"x-visibility-timeout": 1000})
    ch_a.basic_publish("", "q", b"m")
    seen = []
    ch_a.basic_consume("q", lambda ch, method, props, body: seen.append(method))
    conn_a.process_data_events(time_limit=0)
    assert len(seen) == 1

    fake_clock.advance(1500)
    method, _, _ = blocking_connect(clock=fake_clock).channel().basic_get("q")

    assert method.redelivered is True
    with pytest.raises(mqstore.LeaseLostError):
        ch_a.basic_ack(seen[0].delivery_tag)


def test_live_connection_renews_its_leases(blocking_connect):
    # Real time: renewal by the engine's upkeep is the behaviour under test.
    holder = blocking_connect().channel()
    holder.queue_declare("q", arguments={"x-visibility-timeout": 300})
    holder.basic_publish("", "q", b"m")
    other = blocking_connect().channel()
    method, _, _ = holder.basic_get("q")

    holder.connection.sleep(1.5)

    assert other.basic_get("q") == (None, None, None)
    holder.basic_ack(method.delivery_tag)


def test_renewal_keeps_a_lease_past_its_first_deadline(mqstore_broker):
    holder = mqstore_broker.connect().channel()
    holder.queue_declare("q", arguments={"x-visibility-timeout": 300})
    holder.basic_publish("", "q", b"m")
    other = mqstore_broker.connect().channel()
    method, _, _ = holder.basic_get("q")

    for _ in range(5):
        mqstore_broker.advance(200)  # and upkeep, as the upkeep thread runs every 0.5 s

    assert other.basic_get("q") == (None, None, None)
    assert mqstore_broker.messages("q")[0].state == "leased"
    holder.basic_ack(method.delivery_tag)


def test_consumer_timeout_stops_renewal(mqstore_broker):
    holder = mqstore_broker.connect().channel()
    holder.queue_declare("q", arguments={"x-visibility-timeout": 300, "x-consumer-timeout": 200})
    holder.basic_publish("", "q", b"m")
    other = mqstore_broker.connect().channel()
    method, _, _ = holder.basic_get("q")

    # Renewal happens while the delivery is younger than the consumer timeout, then stops.
    for _ in range(5):
        mqstore_broker.advance(150)
    [message] = mqstore_broker.messages("q")
    assert (message.state, message.redelivered) == ("ready", True)
    late, _, body = other.basic_get("q")

    assert body == b"m"
    assert late.redelivered is True
    with pytest.raises(mqstore.LeaseLostError):
        holder.basic_ack(method.delivery_tag)


def test_connection_default_visibility_timeout_applies_without_queue_argument(
    blocking_connect, fake_clock
):
    a = blocking_connect(clock=fake_clock, visibility_timeout_ms=500).channel()
    b = blocking_connect(clock=fake_clock, visibility_timeout_ms=500).channel()
    a.queue_declare("q")
    a.basic_publish("", "q", b"m")
    a.basic_get("q")

    fake_clock.advance(400)
    assert b.basic_get("q") == (None, None, None)
    fake_clock.advance(200)

    assert b.basic_get("q")[2] == b"m"


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (dict(visibility_timeout_ms=0), "visibility_timeout_ms"),
        (dict(durability="sometimes"), "durability"),
    ],
)
def test_invalid_connection_parameters_are_value_errors(db_path, params, match):
    with pytest.raises(ValueError, match=match):
        mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db_path, **params))


# --- restart --------------------------------------------------------------------------------------


def test_messages_survive_closing_and_reopening(blocking_connect):
    first = blocking_connect()
    ch = first.channel()
    ch.queue_declare("transient-queue")
    ch.exchange_declare("x", "fanout")
    ch.queue_bind("transient-queue", "x")
    ch.basic_publish("x", "", b"kept", mqstore.BasicProperties(delivery_mode=1, app_id="a"))
    first.close()

    ch = blocking_connect().channel()
    method, props, body = ch.basic_get("transient-queue")

    assert body == b"kept"
    assert props.app_id == "a"
    assert method.redelivered is False
    assert method.exchange == "x"
    ch.basic_publish("x", "", b"binding kept too")
    assert ready(ch, "transient-queue") == 1


def test_unacked_message_is_back_after_reopening(blocking_connect):
    first = blocking_connect()
    ch = first.channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"m")
    ch.basic_get("q")
    first.close()

    method, _, body = blocking_connect().channel().basic_get("q")

    assert body == b"m"
    assert method.redelivered is True


def test_acked_message_does_not_come_back_after_reopening(blocking_connect):
    first = blocking_connect()
    ch = first.channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"m")
    ch.basic_ack(ch.basic_get("q")[0].delivery_tag)
    first.close()

    assert blocking_connect().channel().basic_get("q") == (None, None, None)


def test_with_statement_closes_the_connection(db_path):
    params = mqstore.ConnectionParameters(path=db_path)
    with mqstore.BlockingConnection(params) as conn, conn.channel() as ch:
        ch.queue_declare("q")
        ch.basic_publish("", "q", b"m")
        ch.basic_get("q")

    assert conn.is_closed
    with mqstore.BlockingConnection(params) as again:
        assert again.channel().basic_get("q")[0].redelivered is True


# --- errors ---------------------------------------------------------------------------------------


def test_every_error_class_is_importable_from_mqstore():
    missing = [name for name in errors.__all__ if not hasattr(mqstore, name)]

    assert missing == []
    for name in errors.__all__:
        assert getattr(mqstore, name) is getattr(errors, name)
        assert getattr(mqstore.exceptions, name) is getattr(errors, name)


BROKER_ERRORS = [
    cls
    for cls in vars(errors).values()
    if inspect.isclass(cls)
    and issubclass(cls, (errors.ChannelClosedByBroker, errors.HardError))
    and cls not in (errors.ChannelClosedByBroker, errors.HardError)
]


@pytest.mark.parametrize("cls", BROKER_ERRORS, ids=lambda cls: cls.__name__)
def test_broker_errors_carry_reply_code_and_text(cls):
    error = cls("SOME_TEXT - detail")

    assert 300 <= error.reply_code < 600
    assert error.reply_text == "SOME_TEXT - detail"
    assert isinstance(error, mqstore.MqstoreError)
    assert str(error.reply_code) in str(error)


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (mqstore.AccessRefusedError, 403),
        (mqstore.NotFoundError, 404),
        (mqstore.ResourceLockedError, 405),
        (mqstore.PreconditionFailedError, 406),
        (mqstore.LeaseLostError, 406),
        (mqstore.MessageTooLargeError, 406),
        (mqstore.exceptions.FeatureNotSupportedError, 540),
    ],
)
def test_error_reply_codes_match_amqp(cls, code):
    assert cls("x").reply_code == code


def test_channel_errors_are_pika_style_channel_closed_by_broker():
    assert issubclass(mqstore.NotFoundError, mqstore.ChannelClosedByBroker)
    assert issubclass(mqstore.ChannelClosedByBroker, mqstore.AMQPChannelError)
    assert issubclass(mqstore.LeaseLostError, mqstore.PreconditionFailedError)


CHANNEL_CALLS = {
    "exchange_declare": lambda ch: ch.exchange_declare("x"),
    "exchange_delete": lambda ch: ch.exchange_delete("x"),
    "queue_declare": lambda ch: ch.queue_declare("q"),
    "queue_delete": lambda ch: ch.queue_delete("q"),
    "queue_purge": lambda ch: ch.queue_purge("q"),
    "queue_bind": lambda ch: ch.queue_bind("q", "amq.direct"),
    "queue_unbind": lambda ch: ch.queue_unbind("q", "amq.direct"),
    "basic_qos": lambda ch: ch.basic_qos(prefetch_count=1),
    "basic_publish": lambda ch: ch.basic_publish("", "q", b"m"),
    "basic_get": lambda ch: ch.basic_get("q"),
    "basic_consume": lambda ch: ch.basic_consume("q", lambda *a: None),
    "basic_cancel": lambda ch: ch.basic_cancel("t"),
    "basic_ack": lambda ch: ch.basic_ack(1),
    "basic_nack": lambda ch: ch.basic_nack(1),
    "basic_reject": lambda ch: ch.basic_reject(1),
    "basic_recover": lambda ch: ch.basic_recover(),
    "confirm_delivery": lambda ch: ch.confirm_delivery(),
}


@pytest.mark.parametrize("call", CHANNEL_CALLS.values(), ids=CHANNEL_CALLS.keys())
def test_calls_on_a_closed_channel_raise_channel_wrong_state(blocking_connect, call):
    ch = blocking_connect().channel()
    ch.close()

    with pytest.raises(mqstore.ChannelWrongStateError):
        call(ch)


def test_closing_a_channel_twice_is_harmless(blocking_connect):
    ch = blocking_connect().channel()
    ch.close()
    ch.close()

    assert ch.is_closed


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda conn, ch: conn.channel(), mqstore.ConnectionWrongStateError),
        (
            lambda conn, ch: conn.process_data_events(time_limit=0),
            mqstore.ConnectionWrongStateError,
        ),
        (lambda conn, ch: conn.sleep(0.01), mqstore.ConnectionWrongStateError),
        (lambda conn, ch: ch.queue_declare("q"), mqstore.ChannelWrongStateError),
        (lambda conn, ch: ch.basic_publish("", "q", b"m"), mqstore.ChannelWrongStateError),
    ],
    ids=["channel", "process_data_events", "sleep", "queue_declare", "publish"],
)
def test_calls_on_a_closed_connection_raise_wrong_state(blocking_connect, call, error):
    conn = blocking_connect()
    ch = conn.channel()
    conn.close()

    with pytest.raises(error):
        call(conn, ch)


def test_closing_a_connection_closes_its_channels(blocking_connect):
    conn = blocking_connect()
    channels = [conn.channel(), conn.channel()]

    conn.close()
    conn.close()

    assert conn.is_closed
    assert all(ch.is_closed for ch in channels)


def test_channel_numbers_are_distinct_and_reusable_by_request(blocking_connect):
    conn = blocking_connect()
    one, two = conn.channel(), conn.channel()
    seven = conn.channel(7)

    assert (one.channel_number, two.channel_number, seven.channel_number) == (1, 2, 7)
    assert conn.channel(7).channel_number not in (1, 2, 7)
