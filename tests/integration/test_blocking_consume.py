"""Consuming through the blocking API: get, consume, acks, requeue, prefetch, event loop."""

from __future__ import annotations

import threading
import time

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


def publish(channel, *bodies: bytes | str, queue: str = "q") -> None:
    for body in bodies:
        channel.basic_publish("", queue, body)


def ready(connection, queue: str = "q") -> int:
    """The queue's ready message count, asked on a fresh channel."""
    channel = connection.channel()
    try:
        return channel.queue_declare(queue, passive=True).method.message_count
    finally:
        channel.close()


class Recorder:
    """A consumer callback that records ``(method, properties, body)``."""

    def __init__(self, ack: bool = False) -> None:
        self.ack = ack
        self.seen: list[tuple[object, object, bytes]] = []

    def __call__(self, channel, method, properties, body) -> None:
        self.seen.append((method, properties, body))
        if self.ack:
            channel.basic_ack(method.delivery_tag)

    @property
    def bodies(self) -> list[bytes]:
        return [body for _, _, body in self.seen]


def pump(connection, until, limit: float = 5.0) -> None:
    """Run the connection's event loop until ``until()`` holds (fails after ``limit`` s)."""
    deadline = time.monotonic() + limit
    while not until():
        left = deadline - time.monotonic()
        assert left > 0, "condition not reached"
        connection.process_data_events(time_limit=min(left, 0.5))


# --- basic_get ------------------------------------------------------------------------------------


def test_basic_get_returns_method_properties_and_body(ch):
    ch.exchange_declare("x", "direct")
    ch.queue_bind("q", "x", "key")
    ch.basic_publish("x", "key", b"first", mqstore.BasicProperties(app_id="a"))
    publish(ch, b"second", b"third")

    method, properties, body = ch.basic_get("q")

    assert body == b"first"
    assert properties.app_id == "a"
    assert method.NAME == "Basic.GetOk"
    assert method.delivery_tag == 1
    assert method.redelivered is False
    assert method.delivery_count == 1
    assert (method.exchange, method.routing_key) == ("x", "key")
    assert method.message_count == 2


def test_basic_get_on_empty_queue_returns_nones(ch):
    assert ch.basic_get("q") == (None, None, None)
    assert ch.is_open


def test_basic_get_on_missing_queue_is_404(ch):
    with pytest.raises(mqstore.NotFoundError) as info:
        ch.basic_get("nope")
    assert info.value.reply_text == "NOT_FOUND - no queue 'nope' in vhost '/'"


def test_basic_get_auto_ack_removes_the_message_at_once(blocking_connect):
    first = blocking_connect()
    ch = first.channel()
    ch.queue_declare("q")
    publish(ch, b"m")

    method, _, body = ch.basic_get("q", auto_ack=True)
    first.close()  # would requeue the message were it merely unacked

    assert body == b"m"
    assert method.delivery_tag == 1
    assert blocking_connect().channel().basic_get("q") == (None, None, None)


def test_auto_acked_delivery_tag_cannot_be_acked(ch):
    publish(ch, b"m")
    tag = ch.basic_get("q", auto_ack=True)[0].delivery_tag

    with pytest.raises(mqstore.PreconditionFailedError, match="unknown delivery tag 1"):
        ch.basic_ack(tag)


def test_delivery_tags_are_per_channel_and_start_at_1(conn, ch):
    publish(ch, b"a", b"b", b"c", b"d")
    other = conn.channel()

    tags_one = [ch.basic_get("q")[0].delivery_tag for _ in range(2)]
    tags_two = [other.basic_get("q")[0].delivery_tag for _ in range(2)]

    assert tags_one == [1, 2]
    assert tags_two == [1, 2]


# --- basic_consume --------------------------------------------------------------------------------


def test_consume_callback_gets_channel_deliver_properties_and_body(conn, ch):
    publish(ch, b"hello")
    calls = []

    def on_message(channel, method, properties, body):
        calls.append((channel, method, properties, body))
        channel.basic_ack(method.delivery_tag)
        channel.stop_consuming()

    tag = ch.basic_consume("q", on_message, consumer_tag="my-tag")
    ch.start_consuming()

    [(channel, method, properties, body)] = calls
    assert channel is ch
    assert tag == "my-tag"
    assert method.NAME == "Basic.Deliver"
    assert method.consumer_tag == "my-tag"
    assert (method.delivery_tag, method.redelivered) == (1, False)
    assert (method.exchange, method.routing_key) == ("", "q")
    assert isinstance(properties, mqstore.BasicProperties)
    assert body == b"hello"
    assert ch.consumer_tags == []
    assert ready(conn) == 0


def test_generated_consumer_tags_are_unique(ch):
    first = ch.basic_consume("q", Recorder())
    second = ch.basic_consume("q", Recorder())

    assert first != second
    assert set(ch.consumer_tags) == {first, second}


def test_duplicate_consumer_tag_on_a_channel_is_refused(ch):
    ch.basic_consume("q", Recorder(), consumer_tag="t1")

    with pytest.raises(mqstore.DuplicateConsumerTag):
        ch.basic_consume("q", Recorder(), consumer_tag="t1")


def test_consume_on_missing_queue_is_404(ch):
    with pytest.raises(mqstore.NotFoundError):
        ch.basic_consume("nope", Recorder())


def test_non_callable_callback_is_type_error(ch):
    with pytest.raises(TypeError, match="callable"):
        ch.basic_consume("q", "not a function")


def test_start_consuming_processes_messages_until_stop_consuming(conn, ch):
    publish(ch, *[str(i) for i in range(5)])
    seen = []

    def on_message(channel, method, properties, body):
        seen.append(body)
        channel.basic_ack(method.delivery_tag)
        if len(seen) == 3:
            channel.stop_consuming()

    ch.basic_consume("q", on_message, auto_ack=False)
    ch.start_consuming()

    # The two leased in the same batch were requeued, not dispatched after the cancel.
    assert seen == [b"0", b"1", b"2"]
    assert ch.consumer_tags == []
    assert ready(conn) == 2
    method, _, body = ch.basic_get("q")
    assert (body, method.redelivered) == (b"3", True)


def test_auto_ack_consumer_removes_messages_without_ack(conn, ch):
    publish(ch, b"a", b"b")
    recorder = Recorder()
    ch.basic_consume("q", recorder, auto_ack=True)

    pump(conn, lambda: len(recorder.seen) == 2)
    ch.close()

    assert recorder.bodies == [b"a", b"b"]
    assert ready(conn) == 0


def test_consumer_receives_messages_published_after_it_started(blocking_connect):
    consumer_conn = blocking_connect()
    ch = consumer_conn.channel()
    ch.queue_declare("q")
    recorder = Recorder(ack=True)
    ch.basic_consume("q", recorder)
    producer = blocking_connect().channel()

    producer.basic_publish("", "q", b"late")
    consumer_conn.process_data_events(time_limit=None)

    assert recorder.bodies == [b"late"]


def test_consumers_on_one_channel_share_messages_round_robin(conn, ch):
    first, second = Recorder(ack=True), Recorder(ack=True)
    ch.basic_consume("q", first)
    ch.basic_consume("q", second)

    publish(ch, *[str(i) for i in range(10)])
    pump(conn, lambda: len(first.seen) + len(second.seen) == 10)

    evens = [b"0", b"2", b"4", b"6", b"8"]
    odds = [b"1", b"3", b"5", b"7", b"9"]
    assert sorted([first.bodies, second.bodies]) == [evens, odds]


def test_consumers_on_different_connections_each_get_distinct_messages(blocking_connect):
    # Given two consumer connections with prefetch 1 on one queue.
    conns = [blocking_connect(), blocking_connect()]
    recorders = [Recorder(), Recorder()]
    channels = []
    for connection, recorder in zip(conns, recorders, strict=True):
        channel = connection.channel()
        channel.queue_declare("q")
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume("q", recorder)
        channels.append(channel)
    publish(channels[0], *[str(i) for i in range(6)])

    # When each takes its turn, acking what it holds.
    for _ in range(3):
        for connection, channel, recorder in zip(conns, channels, recorders, strict=True):
            before = len(recorder.seen)
            pump(connection, lambda r=recorder, b=before: len(r.seen) == b + 1)
            channel.basic_ack(recorder.seen[-1][0].delivery_tag)

    # Then every message went to exactly one consumer.
    got = recorders[0].bodies + recorders[1].bodies
    assert sorted(got) == [str(i).encode() for i in range(6)]
    assert len(recorders[0].bodies) == len(recorders[1].bodies) == 3


def test_basic_cancel_stops_deliveries_and_drops_the_consumer_count(conn, ch):
    recorder = Recorder(ack=True)
    tag = ch.basic_consume("q", recorder)
    publish(ch, b"before")
    pump(conn, lambda: recorder.bodies == [b"before"])

    ch.basic_cancel(tag)
    publish(ch, b"after")
    conn.process_data_events(time_limit=0)

    assert recorder.bodies == [b"before"]
    assert ch.queue_declare("q", passive=True).method.consumer_count == 0
    assert ready(conn) == 1


def test_exclusive_consumer_refuses_other_consumers(conn, ch):
    ch.basic_consume("q", Recorder(), exclusive=True)
    other = conn.channel()

    with pytest.raises(mqstore.AccessRefusedError) as info:
        other.basic_consume("q", Recorder())
    assert info.value.reply_text == "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use"


def test_exclusive_consume_on_a_queue_with_consumers_is_403(conn, ch):
    ch.basic_consume("q", Recorder())

    with pytest.raises(mqstore.AccessRefusedError):
        conn.channel().basic_consume("q", Recorder(), exclusive=True)


def test_closing_the_channel_in_a_callback_stops_dispatch_and_requeues(conn, ch):
    publish(ch, b"1", b"2", b"3")
    seen = []

    def on_message(channel, method, properties, body):
        seen.append(body)
        channel.close()

    ch.basic_consume("q", on_message)
    conn.process_data_events(time_limit=0)

    assert seen == [b"1"]
    assert ready(conn) == 3


def test_deliveries_after_a_raising_callback_are_dispatched_by_the_next_pass(conn, ch):
    publish(ch, b"boom", b"b", b"c")
    seen = []

    def on_message(channel, method, properties, body):
        seen.append(body)
        if body == b"boom":
            raise RuntimeError("callback failed")
        channel.basic_ack(method.delivery_tag)

    ch.basic_consume("q", on_message)
    with pytest.raises(RuntimeError, match="callback failed"):
        conn.process_data_events(time_limit=0)
    conn.process_data_events(time_limit=0)

    assert seen == [b"boom", b"b", b"c"]
    ch.close()
    assert ready(conn) == 1  # only the unacked b"boom", requeued by the close


def test_basic_cancel_of_unknown_tag_is_harmless(ch):
    ch.basic_cancel("never-registered")

    assert ch.is_open


# --- acks, nacks, rejects -------------------------------------------------------------------------


def test_ack_deletes_the_message(conn, ch):
    publish(ch, b"m")
    method, _, _ = ch.basic_get("q")

    ch.basic_ack(method.delivery_tag)
    ch.close()

    assert conn.channel().basic_get("q") == (None, None, None)


def test_ack_multiple_acks_every_tag_up_to_it(conn, ch):
    publish(ch, b"1", b"2", b"3", b"4")
    tags = [ch.basic_get("q")[0].delivery_tag for _ in range(4)]

    ch.basic_ack(tags[2], multiple=True)
    ch.close()

    assert tags == [1, 2, 3, 4]
    other = conn.channel()
    method, _, body = other.basic_get("q")
    assert body == b"4"
    assert method.redelivered is True
    assert other.basic_get("q") == (None, None, None)


def test_ack_tag_0_with_multiple_acks_everything_outstanding(conn, ch):
    publish(ch, b"1", b"2", b"3")
    for _ in range(3):
        ch.basic_get("q")

    ch.basic_ack(0, multiple=True)
    ch.close()

    assert conn.channel().basic_get("q") == (None, None, None)


def test_ack_tag_0_with_multiple_and_nothing_outstanding_is_ok(ch):
    ch.basic_ack(0, multiple=True)

    assert ch.is_open


def test_ack_tag_0_without_multiple_is_406(ch):
    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.basic_ack(0)
    assert info.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 0"


def test_ack_of_unknown_tag_is_406_and_closes_the_channel(conn, ch):
    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.basic_ack(99)
    assert info.value.reply_code == 406
    assert info.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99"
    assert ch.is_closed
    with pytest.raises(mqstore.ChannelWrongStateError):
        ch.basic_get("q")


@pytest.mark.parametrize(
    "settle",
    [
        lambda ch, tag: ch.basic_nack(tag),
        lambda ch, tag: ch.basic_reject(tag),
        lambda ch, tag: ch.basic_nack(tag, requeue=False),
    ],
    ids=["nack", "reject", "nack-drop"],
)
def test_nack_or_reject_of_unknown_tag_is_406(ch, settle):
    with pytest.raises(mqstore.PreconditionFailedError) as info:
        settle(ch, 77)
    assert info.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 77"


def test_ack_multiple_of_a_tag_not_outstanding_is_406_even_with_lower_tags(conn, ch):
    publish(ch, b"1", b"2")
    ch.basic_get("q")
    ch.basic_ack(ch.basic_get("q")[0].delivery_tag)

    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.basic_ack(2, multiple=True)
    assert info.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 2"
    # The channel closed, so tag 1 was requeued rather than acked.
    assert ready(conn) == 1


def test_double_ack_is_406(conn, ch):
    publish(ch, b"m")
    tag = ch.basic_get("q")[0].delivery_tag
    ch.basic_ack(tag)

    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.basic_ack(tag)
    assert info.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"


def test_failed_ack_closing_the_channel_requeues_its_other_unacked(conn, ch):
    publish(ch, b"held")
    ch.basic_get("q")

    with pytest.raises(mqstore.PreconditionFailedError):
        ch.basic_ack(99)

    method, _, body = conn.channel().basic_get("q")
    assert body == b"held"
    assert method.redelivered is True


def test_ack_on_another_channel_is_406_and_leaves_the_delivery(conn, ch):
    publish(ch, b"m")
    tag = ch.basic_get("q")[0].delivery_tag
    other = conn.channel()

    with pytest.raises(mqstore.PreconditionFailedError) as info:
        other.basic_ack(tag)
    assert info.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"
    ch.basic_ack(tag)
    assert ready(conn) == 0


@pytest.mark.parametrize(
    "requeue",
    [lambda ch, tag: ch.basic_nack(tag, requeue=True), lambda ch, tag: ch.basic_reject(tag)],
    ids=["nack", "reject"],
)
def test_requeued_message_goes_back_in_its_place_marked_redelivered(ch, requeue):
    publish(ch, b"1", b"2", b"3")
    first, first_props, _ = ch.basic_get("q")
    second, _, _ = ch.basic_get("q")

    requeue(ch, first.delivery_tag)
    again, props, body = ch.basic_get("q")

    assert first_props.headers is None  # no x-delivery-count on the first delivery
    assert body == b"1"  # ahead of b"3": FIFO order kept
    assert again.redelivered is True
    assert again.delivery_count == 2
    assert again.delivery_tag == 3
    assert props.headers == {"x-delivery-count": 1}
    assert second.redelivered is False


def test_x_delivery_count_is_added_beside_existing_headers_and_grows(ch):
    ch.basic_publish("", "q", b"m", mqstore.BasicProperties(headers={"k": "v"}))
    counts = []
    for _ in range(3):
        method, props, _ = ch.basic_get("q")
        counts.append((method.delivery_count, props.headers))
        ch.basic_nack(method.delivery_tag, requeue=True)

    assert counts == [
        (1, {"k": "v"}),
        (2, {"k": "v", "x-delivery-count": 1}),
        (3, {"k": "v", "x-delivery-count": 2}),
    ]


def test_nack_without_requeue_drops_the_message(conn, ch):
    publish(ch, b"bad", b"good")
    tag = ch.basic_get("q")[0].delivery_tag

    ch.basic_nack(tag, requeue=False)
    ch.close()

    assert conn.channel().basic_get("q", auto_ack=True)[2] == b"good"
    assert ready(conn) == 0


def test_reject_without_requeue_drops_the_message(conn, ch):
    publish(ch, b"bad")
    tag = ch.basic_get("q")[0].delivery_tag

    ch.basic_reject(tag, requeue=False)
    ch.close()

    assert conn.channel().basic_get("q") == (None, None, None)


def test_nack_multiple_requeues_all_up_to_the_tag_in_order(ch):
    publish(ch, b"1", b"2", b"3")
    for _ in range(3):
        ch.basic_get("q")

    ch.basic_nack(2, multiple=True, requeue=True)

    bodies = [ch.basic_get("q")[2] for _ in range(2)]
    assert bodies == [b"1", b"2"]
    assert ch.basic_get("q") == (None, None, None)


def test_consumer_nack_requeue_redelivers_to_the_consumer(conn, ch):
    seen = []

    def on_message(channel, method, properties, body):
        seen.append((method.redelivered, method.delivery_count))
        if method.redelivered:
            channel.basic_ack(method.delivery_tag)
        else:
            channel.basic_nack(method.delivery_tag, requeue=True)

    publish(ch, b"m")
    ch.basic_consume("q", on_message)
    pump(conn, lambda: len(seen) == 2)

    assert seen == [(False, 1), (True, 2)]


# --- requeue on close and recover -----------------------------------------------------------------


def test_closing_a_channel_requeues_its_unacked_messages_at_once(conn, ch):
    publish(ch, b"1", b"2")
    ch.basic_get("q")
    ch.basic_get("q")

    ch.close()

    other = conn.channel()
    got = [other.basic_get("q") for _ in range(2)]
    assert [body for _, _, body in got] == [b"1", b"2"]
    assert all(method.redelivered for method, _, _ in got)


def test_closing_a_channel_requeues_messages_prefetched_by_its_consumer(conn, ch):
    publish(ch, b"1", b"2", b"3")
    recorder = Recorder()
    ch.basic_consume("q", recorder)
    pump(conn, lambda: len(recorder.seen) == 3)

    ch.close()

    assert ready(conn) == 3


def test_closing_a_connection_requeues_its_unacked_messages(blocking_connect):
    first = blocking_connect()
    channel = first.channel()
    channel.queue_declare("q")
    publish(channel, b"m")
    channel.basic_get("q")
    other = blocking_connect().channel()
    assert other.basic_get("q") == (None, None, None)

    first.close()

    method, _, body = other.basic_get("q")
    assert body == b"m"
    assert method.redelivered is True


def test_ack_after_the_queue_was_deleted_is_accepted(conn, ch):
    publish(ch, b"m")
    tag = ch.basic_get("q")[0].delivery_tag
    conn.channel().queue_delete("q")

    ch.basic_ack(tag)

    # The (deferred) ack committed without a lease-lost error: the channel stays usable.
    ch.queue_declare("other")
    assert ch.is_open


def test_basic_recover_requeues_unacked_and_forgets_their_tags(ch):
    publish(ch, b"1", b"2")
    ch.basic_get("q")
    ch.basic_get("q")

    ch.basic_recover(requeue=True)

    method, _, body = ch.basic_get("q")
    assert (body, method.redelivered, method.delivery_tag) == (b"1", True, 3)
    with pytest.raises(mqstore.PreconditionFailedError):
        ch.basic_ack(1)


# --- prefetch -------------------------------------------------------------------------------------


def test_prefetch_count_bounds_unacked_deliveries_per_consumer(conn, ch):
    publish(ch, *[str(i) for i in range(6)])
    ch.basic_qos(prefetch_count=2)
    recorder = Recorder()
    ch.basic_consume("q", recorder)

    conn.process_data_events(time_limit=0)
    conn.process_data_events(time_limit=0)
    held = len(recorder.seen)
    ch.basic_ack(recorder.seen[0][0].delivery_tag)
    pump(conn, lambda: len(recorder.seen) == 3)
    conn.process_data_events(time_limit=0)

    assert held == 2
    assert recorder.bodies == [b"0", b"1", b"2"]
    assert ready(conn) == 3


def test_prefetch_applies_to_each_consumer_separately(conn, ch):
    publish(ch, *[str(i) for i in range(10)])
    ch.basic_qos(prefetch_count=2)
    first, second = Recorder(), Recorder()
    ch.basic_consume("q", first)
    ch.basic_consume("q", second)

    pump(conn, lambda: len(first.seen) + len(second.seen) == 4)
    conn.process_data_events(time_limit=0)

    assert (len(first.seen), len(second.seen)) == (2, 2)
    assert ready(conn) == 6


def test_global_qos_bounds_unacked_deliveries_per_channel(conn, ch):
    ch.queue_declare("q2")
    publish(ch, *[str(i) for i in range(5)])
    publish(ch, *[str(i) for i in range(5)], queue="q2")
    ch.basic_qos(prefetch_count=3, global_qos=True)
    first, second = Recorder(), Recorder()
    ch.basic_consume("q", first)
    ch.basic_consume("q2", second)

    pump(conn, lambda: len(first.seen) + len(second.seen) == 3)
    conn.process_data_events(time_limit=0)

    assert len(first.seen) + len(second.seen) == 3
    assert ready(conn, "q") + ready(conn, "q2") == 7


def test_auto_ack_consumer_ignores_prefetch(conn, ch):
    publish(ch, *[str(i) for i in range(5)])
    ch.basic_qos(prefetch_count=1)
    recorder = Recorder()
    ch.basic_consume("q", recorder, auto_ack=True)

    pump(conn, lambda: len(recorder.seen) == 5)

    assert recorder.bodies == [str(i).encode() for i in range(5)]


# --- the event loop -------------------------------------------------------------------------------


def test_process_data_events_with_time_limit_returns_when_idle(conn, ch):
    recorder = Recorder()
    ch.basic_consume("q", recorder)

    started = time.monotonic()
    conn.process_data_events(time_limit=0.2)
    elapsed = time.monotonic() - started

    assert recorder.seen == []
    assert 0.15 <= elapsed < 5


def test_process_data_events_wakes_for_a_publish_from_another_thread(blocking_connect):
    consumer = blocking_connect()
    ch = consumer.channel()
    ch.queue_declare("q")
    recorder = Recorder(ack=True)
    ch.basic_consume("q", recorder)
    producer = blocking_connect()
    waiting = threading.Event()

    def produce():
        waiting.wait(5)
        producer.channel().basic_publish("", "q", b"from thread")

    thread = threading.Thread(target=produce)
    thread.start()
    waiting.set()
    consumer.process_data_events(time_limit=10)
    thread.join()

    assert recorder.bodies == [b"from thread"]


def test_add_callback_threadsafe_runs_the_callback_on_the_connection_thread(conn):
    ran_on = []
    done = threading.Event()

    def callback():
        ran_on.append(threading.get_ident())
        done.set()

    thread = threading.Thread(target=conn.add_callback_threadsafe, args=(callback,))
    thread.start()
    thread.join()
    assert ran_on == []  # not run by the calling thread
    conn.process_data_events(time_limit=None)

    assert done.is_set()
    assert ran_on == [threading.get_ident()]


def test_add_callback_threadsafe_wakes_a_waiting_event_loop(conn):
    ran = threading.Event()
    started = threading.Event()

    def other_thread():
        started.wait(5)
        conn.add_callback_threadsafe(ran.set)

    thread = threading.Thread(target=other_thread)
    thread.start()
    started.set()
    conn.process_data_events(time_limit=10)
    thread.join()

    assert ran.is_set()


def test_call_later_runs_after_its_delay_and_remove_timeout_cancels(conn):
    fired = []
    conn.call_later(0.05, lambda: fired.append("a"))
    cancelled = conn.call_later(0.05, lambda: fired.append("b"))
    conn.remove_timeout(cancelled)

    conn.process_data_events(time_limit=None)

    assert fired == ["a"]


def test_connection_sleep_dispatches_deliveries_while_sleeping(conn, ch):
    recorder = Recorder(ack=True)
    ch.basic_consume("q", recorder)
    publish(ch, b"during sleep")

    started = time.monotonic()
    conn.sleep(0.1)

    assert time.monotonic() - started >= 0.1
    assert recorder.bodies == [b"during sleep"]


def test_consume_generator_yields_nones_on_inactivity_timeout(ch):
    generator = ch.consume("q", inactivity_timeout=0.05)

    assert next(generator) == (None, None, None)
    publish(ch, b"m")
    method, _, body = next(generator)
    ch.basic_ack(method.delivery_tag)

    assert body == b"m"
    assert method.redelivered is False
    assert ch.cancel() == 0


def test_consume_generator_cancel_requeues_buffered_messages(conn, ch):
    publish(ch, b"1", b"2", b"3")
    generator = ch.consume("q", inactivity_timeout=1)
    method, _, body = next(generator)

    requeued = ch.cancel()

    assert body == b"1"
    assert requeued == 2
    assert ch.consumer_tags == []
    assert ready(conn) == 2
    assert list(generator) == []
    ch.basic_ack(method.delivery_tag)
    other = conn.channel()
    assert [other.basic_get("q", auto_ack=True)[2] for _ in range(2)] == [b"2", b"3"]


def test_consume_generator_with_other_parameters_is_refused_while_active(ch):
    ch.queue_declare("q2")
    generator = ch.consume("q", inactivity_timeout=0.01)
    next(generator)

    with pytest.raises(ValueError):
        next(ch.consume("q2", inactivity_timeout=0.01))


def test_deleting_a_consumed_queue_cancels_the_consumer_and_notifies(conn, ch):
    cancelled = []
    ch.add_on_cancel_callback(cancelled.append)
    tag = ch.basic_consume("q", Recorder())

    conn.channel().queue_delete("q")
    pump(conn, lambda: bool(cancelled))

    [frame] = cancelled
    assert frame.method.consumer_tag == tag
    assert frame.method.NAME == "Basic.Cancel"
    assert frame.channel_number == ch.channel_number
    assert ch.consumer_tags == []
    assert ch.is_open


def test_start_consuming_returns_when_the_broker_cancels_the_consumer(blocking_connect):
    consumer = blocking_connect()
    ch = consumer.channel()
    ch.queue_declare("q")
    ch.basic_consume("q", Recorder())
    deleter = blocking_connect()

    consumer.add_callback_threadsafe(lambda: deleter.channel().queue_delete("q"))
    ch.start_consuming()

    assert ch.consumer_tags == []


@pytest.mark.timeout(10)
def test_start_consuming_returns_when_another_connection_deletes_the_queue(blocking_connect):
    consumer = blocking_connect()
    ch = consumer.channel()
    ch.queue_declare("q")
    cancelled = []
    ch.add_on_cancel_callback(cancelled.append)
    ch.basic_consume("q", Recorder())
    deleter = blocking_connect()
    go = threading.Event()

    def delete():
        go.wait(5)
        deleter.channel().queue_delete("q")

    thread = threading.Thread(target=delete)
    thread.start()
    go.set()
    ch.start_consuming()
    thread.join()

    assert len(cancelled) == 1
    assert ch.consumer_tags == []


def test_deleting_a_consumed_queue_cancels_the_consume_generator(conn, ch):
    generator = ch.consume("q", inactivity_timeout=0.05)
    assert next(generator) == (None, None, None)

    conn.channel().queue_delete("q")

    assert list(generator) == []
