"""RabbitMQ's queue features through the blocking API: TTL, queue expiry, length limits,
dead-lettering with x-death, delivery limits, priorities, alternate exchanges, queue types.

Time is a FakeClock (moving both the lease clock and the wall clock TTLs use); the engine's
expiry sweep is run by hand with ``connection._engine.upkeep()`` instead of waiting for the
upkeep thread.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mqstore
from mqstore import BasicProperties


@pytest.fixture
def conn(blocking_connect, fake_clock):
    return blocking_connect(clock=fake_clock)


@pytest.fixture
def ch(conn):
    return conn.channel()


def sweep(conn) -> None:
    conn._engine.upkeep()


def drain(ch, queue: str) -> list[tuple[Any, Any, bytes]]:
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))


def bodies(ch, queue: str) -> list[bytes]:
    return [body for _, _, body in drain(ch, queue)]


def ready(ch, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def dlx_pair(ch, source: str = "src", target: str = "dead", **args: Any) -> None:
    """``source`` dead-letters through fanout exchange 'dlx' into ``target``."""
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare(target)
    ch.queue_bind(target, "dlx")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": "dlx", **args})


# --- TTL ---------------------------------------------------------------------------------


def test_queue_ttl_expired_message_is_never_delivered(conn, ch, fake_clock):
    ch.queue_declare("q", arguments={"x-message-ttl": 1000})
    ch.basic_publish("", "q", b"old")
    fake_clock.advance(999)
    ch.basic_publish("", "q", b"young")
    fake_clock.advance(1)
    # No sweep has run: the lease path itself must skip the expired entry.
    assert bodies(ch, "q") == [b"young"]


def test_per_message_expiration_and_the_lower_ttl_wins(conn, ch, fake_clock):
    ch.queue_declare("q", arguments={"x-message-ttl": 5000})
    ch.basic_publish("", "q", b"short", BasicProperties(expiration="100"))
    ch.basic_publish("", "q", b"queue-ttl", BasicProperties(expiration="60000"))
    ch.basic_publish("", "plain", b"x")  # unroutable, ignored
    ch.queue_declare("p")
    ch.basic_publish("", "p", b"msg-ttl", BasicProperties(expiration="100"))
    ch.basic_publish("", "p", b"forever")
    fake_clock.advance(100)
    assert bodies(ch, "q") == [b"queue-ttl"]
    assert bodies(ch, "p") == [b"forever"]
    ch.basic_publish("", "q", b"later")
    fake_clock.advance(5000)
    assert bodies(ch, "q") == []


def test_expiry_sweep_removes_expired_messages_without_consumers(conn, ch, fake_clock):
    ch.queue_declare("q", arguments={"x-message-ttl": 10})
    for i in range(5):
        ch.basic_publish("", "q", str(i))
    assert ready(ch, "q") == 5
    fake_clock.advance(10)
    sweep(conn)
    assert ready(ch, "q") == 0
    assert conn._engine.run(mqstore.store.counters)["dropped_expired"] == 5


def test_unacked_message_does_not_expire_until_returned(conn, ch, fake_clock):
    ch.queue_declare("q", arguments={"x-message-ttl": 1000})
    ch.basic_publish("", "q", b"m")
    method, _, _ = ch.basic_get("q")
    fake_clock.advance(2000)
    sweep(conn)  # the leased entry is not swept
    ch.basic_nack(method.delivery_tag, requeue=True)
    # Requeued past its original deadline: expired, never delivered again.
    assert bodies(ch, "q") == []


def test_expired_message_is_dead_lettered_with_x_death(conn, ch, fake_clock):
    dlx_pair(ch, "src", "dead", **{"x-message-ttl": 500})
    ch.basic_publish(
        "",
        "src",
        b"m",
        BasicProperties(headers={"app": 1}, expiration="200", message_id="id-1"),
    )
    fake_clock.advance(200)
    sweep(conn)
    assert ready(ch, "src") == 0
    [(method, props, body)] = drain(ch, "dead")
    assert body == b"m"
    assert method.exchange == "dlx"
    assert method.routing_key == "src"
    assert props.expiration is None
    assert props.message_id == "id-1"
    headers = props.headers
    assert headers["app"] == 1
    [death] = headers["x-death"]
    assert death["queue"] == "src"
    assert death["reason"] == "expired"
    assert death["count"] == 1
    assert death["exchange"] == ""
    assert death["routing-keys"] == ["src"]
    assert death["original-expiration"] == "200"
    assert isinstance(death["time"], datetime)
    assert death["time"].timestamp() == (1_700_000_000_000 + 200) // 1000
    assert headers["x-first-death-queue"] == "src"
    assert headers["x-first-death-reason"] == "expired"
    assert headers["x-first-death-exchange"] == ""


def test_ttl_zero_expires_at_once(conn, ch):
    ch.queue_declare("q", arguments={"x-message-ttl": 0})
    ch.basic_publish("", "q", b"m")
    assert bodies(ch, "q") == []


def test_invalid_expiration_is_refused(ch, conn):
    for bad in ("", "abc", "1.5", "-1"):
        channel = conn.channel()
        channel.queue_declare("q")
        with pytest.raises(mqstore.PreconditionFailedError):
            channel.basic_publish("", "q", b"m", BasicProperties(expiration=bad))


# --- queue expiry (x-expires) --------------------------------------------------------------


def test_unused_queue_is_deleted_after_x_expires(conn, ch, fake_clock):
    ch.queue_declare("q", arguments={"x-expires": 1000})
    ch.basic_publish("", "q", b"m")  # publishing is not a use
    fake_clock.advance(600)
    ch.queue_declare("q", arguments={"x-expires": 1000})  # a redeclare is
    fake_clock.advance(600)
    sweep(conn)
    assert ready(ch, "q") == 1
    fake_clock.advance(400)
    sweep(conn)
    with pytest.raises(mqstore.NotFoundError):
        ch.queue_declare("q", passive=True)


def test_queue_with_a_consumer_does_not_expire_until_it_leaves(conn, ch, fake_clock):
    ch.queue_declare("q", arguments={"x-expires": 1000})
    tag = ch.basic_consume("q", lambda *a: None)
    fake_clock.advance(5000)
    sweep(conn)
    assert ready(ch, "q") == 0
    ch.basic_cancel(tag)
    fake_clock.advance(999)
    sweep(conn)
    ch.queue_declare("q", passive=True)
    fake_clock.advance(1)
    sweep(conn)
    with pytest.raises(mqstore.NotFoundError):
        ch.queue_declare("q", passive=True)


def test_basic_get_keeps_a_queue_alive_and_expiry_is_lazy_too(conn, ch, fake_clock):
    ch.queue_declare("q", arguments={"x-expires": 1000})
    fake_clock.advance(900)
    assert ch.basic_get("q")[0] is None
    fake_clock.advance(900)
    ch.queue_declare("q", passive=True)
    fake_clock.advance(100)
    # No sweep: a use after the deadline finds the queue gone.
    with pytest.raises(mqstore.NotFoundError):
        ch.queue_declare("q", passive=True)


def test_expired_queue_messages_are_not_dead_lettered(conn, ch, fake_clock):
    dlx_pair(ch, "src", "dead", **{"x-expires": 100})
    ch.basic_publish("", "src", b"m")
    fake_clock.advance(100)
    sweep(conn)
    assert ready(ch, "dead") == 0


# --- length limits -----------------------------------------------------------------------


def test_drop_head_keeps_the_newest(conn, ch):
    ch.queue_declare("q", arguments={"x-max-length": 2})
    for i in range(5):
        ch.basic_publish("", "q", str(i))
    assert bodies(ch, "q") == [b"3", b"4"]


def test_drop_head_dead_letters_with_reason_maxlen(conn, ch):
    dlx_pair(ch, "src", "dead", **{"x-max-length": 1})
    ch.basic_publish("", "src", b"a")
    ch.basic_publish("", "src", b"b")
    assert bodies(ch, "src") == [b"b"]
    [(_, props, body)] = drain(ch, "dead")
    assert body == b"a"
    assert props.headers["x-death"][0]["reason"] == "maxlen"


def test_max_length_bytes_drop_head(conn, ch):
    ch.queue_declare("q", arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", "q", body)
    assert bodies(ch, "q") == [b"bbbb", b"cccc"]
    ch.basic_publish("", "q", b"x" * 11)  # larger than the limit: dropped, even alone
    assert ready(ch, "q") == 0


def test_max_length_counts_ready_messages_only(conn, ch):
    ch.queue_declare("q", arguments={"x-max-length": 1})
    ch.basic_publish("", "q", b"a")
    method, _, _ = ch.basic_get("q")
    ch.basic_publish("", "q", b"b")
    assert ready(ch, "q") == 1
    # The requeued message goes back to the head of a full queue and is dropped at once.
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert bodies(ch, "q") == [b"b"]


def test_max_length_zero(conn, ch):
    ch.queue_declare("q", arguments={"x-max-length": 0})
    ch.basic_publish("", "q", b"a")
    assert ready(ch, "q") == 0


def test_reject_publish_raises_nack_error(conn, ch):
    ch.queue_declare("q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", "q", b"a")
    with pytest.raises(mqstore.NackError) as info:
        ch.basic_publish("", "q", b"b")
    assert "full" in str(info.value)
    assert info.value.messages[0].body == b"b"
    assert ch.is_open  # a refused publish does not close the channel
    assert bodies(ch, "q") == [b"a"]
    ch.basic_publish("", "q", b"c")
    assert bodies(ch, "q") == [b"c"]


def test_reject_publish_bytes_refuses_an_oversized_body_even_when_empty(conn, ch):
    ch.queue_declare("q", arguments={"x-max-length-bytes": 3, "x-overflow": "reject-publish"})
    with pytest.raises(mqstore.NackError):
        ch.basic_publish("", "q", b"abcd")
    ch.basic_publish("", "q", b"abc")
    assert ready(ch, "q") == 1


def test_reject_publish_on_one_of_two_queues(conn, ch):
    """As RabbitMQ: the other queue keeps its copy, the publisher is nacked."""
    ch.exchange_declare("fan", "fanout")
    ch.queue_declare("full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    ch.queue_declare("open")
    ch.queue_bind("full", "fan")
    ch.queue_bind("open", "fan")
    with pytest.raises(mqstore.NackError):
        ch.basic_publish("fan", "", b"m")
    assert bodies(ch, "open") == [b"m"]


def test_reject_publish_does_not_dead_letter_but_reject_publish_dlx_does(conn, ch):
    dlx_pair(ch, "a", "dead", **{"x-max-length": 0, "x-overflow": "reject-publish"})
    ch.queue_declare(
        "b",
        arguments={
            "x-dead-letter-exchange": "dlx",
            "x-max-length": 0,
            "x-overflow": "reject-publish-dlx",
        },
    )
    with pytest.raises(mqstore.NackError):
        ch.basic_publish("", "a", b"to-a")
    with pytest.raises(mqstore.NackError):
        ch.basic_publish("", "b", b"to-b")
    [(_, props, body)] = drain(ch, "dead")
    assert body == b"to-b"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert props.headers["x-death"][0]["queue"] == "b"


# --- dead-lettering ----------------------------------------------------------------------


def test_reject_without_requeue_dead_letters_once(conn, ch):
    dlx_pair(ch)
    ch.basic_publish("", "src", b"m", BasicProperties(headers={"k": "v"}))
    method, _, _ = ch.basic_get("src")
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert ready(ch, "src") == 0
    [(method, props, body)] = drain(ch, "dead")
    assert body == b"m"
    death = props.headers["x-death"][0]
    assert (death["queue"], death["reason"], death["count"]) == ("src", "rejected", 1)
    assert props.headers["k"] == "v"


def test_nack_without_requeue_and_no_dlx_drops(conn, ch):
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"m")
    method, _, _ = ch.basic_get("q")
    ch.basic_nack(method.delivery_tag, requeue=False)
    assert ready(ch, "q") == 0


def test_dead_letter_routing_key_replaces_the_key_and_removes_cc(conn, ch):
    ch.exchange_declare("dlx", "direct")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx", "dead-key")
    ch.queue_declare(
        "src",
        arguments={"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead-key"},
    )
    ch.basic_publish("", "src", b"m", BasicProperties(headers={"CC": ["other"]}))
    method, _, _ = ch.basic_get("src")
    ch.basic_nack(method.delivery_tag, requeue=False)
    [(method, props, _)] = drain(ch, "dead")
    assert method.routing_key == "dead-key"
    assert "CC" not in props.headers
    assert props.headers["x-death"][0]["routing-keys"] == ["src", "other"]


def test_dead_letter_to_the_default_exchange(conn, ch):
    ch.queue_declare("dead")
    ch.queue_declare(
        "src",
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"},
    )
    ch.basic_publish("", "src", b"m")
    method, _, _ = ch.basic_get("src")
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert bodies(ch, "dead") == [b"m"]


def test_missing_dead_letter_exchange_drops_silently(conn, ch):
    ch.queue_declare("src", arguments={"x-dead-letter-exchange": "nowhere"})
    ch.basic_publish("", "src", b"m")
    method, _, _ = ch.basic_get("src")
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert ready(ch, "src") == 0


def test_x_death_count_increments_for_the_same_queue_and_reason(conn, ch):
    """Rejected twice from 'src' (via a retry queue): one x-death entry per (queue,
    reason), the newest first, the repeat's count incremented."""
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("retry", arguments={"x-dead-letter-exchange": "", "x-message-ttl": 0})
    ch.queue_bind("retry", "dlx")
    ch.queue_declare(
        "src",
        arguments={"x-dead-letter-exchange": "dlx"},
    )
    # retry dead-letters to the default exchange with the message's own key ('src').
    ch.basic_publish("", "src", b"m")
    for _ in range(2):
        method, _, _ = ch.basic_get("src")
        ch.basic_reject(method.delivery_tag, requeue=False)
        conn._engine.upkeep()  # expire from 'retry' back into 'src'
    method, props, _ = ch.basic_get("src")
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        ("retry", "expired", 2),
        ("src", "rejected", 2),
    ]
    assert props.headers["x-first-death-queue"] == "src"
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-last-death-queue"] == "retry"


def test_automatic_dead_letter_cycle_is_dropped(conn, ch, fake_clock):
    """A queue that dead-letters expired messages back to itself: RabbitMQ detects the cycle
    (no rejection in it) and drops the message."""
    ch.queue_declare("loop", arguments={"x-dead-letter-exchange": "", "x-message-ttl": 100})
    ch.basic_publish("", "loop", b"m")
    fake_clock.advance(100)
    sweep(conn)
    assert ready(ch, "loop") == 0
    assert conn._engine.run(mqstore.store.counters)["dead_letter_cycles"] == 1


def test_two_queue_expiry_cycle_is_dropped(conn, ch, fake_clock):
    ch.queue_declare(
        "a",
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "b",
            "x-message-ttl": 10,
        },
    )
    ch.queue_declare(
        "b",
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "a",
            "x-message-ttl": 10,
        },
    )
    ch.basic_publish("", "a", b"m")
    for _ in range(4):
        fake_clock.advance(10)
        sweep(conn)
    assert ready(ch, "a") == 0 and ready(ch, "b") == 0


def test_cycle_with_a_rejection_is_not_dropped(conn, ch):
    ch.queue_declare("loop", arguments={"x-dead-letter-exchange": ""})
    ch.basic_publish("", "loop", b"m")
    for count in (1, 2, 3):
        method, props, _ = ch.basic_get("loop")
        if count > 1:
            assert props.headers["x-death"][0]["count"] == count - 1
        ch.basic_reject(method.delivery_tag, requeue=False)
    assert ready(ch, "loop") == 1


# --- delivery limit ----------------------------------------------------------------------


def test_poison_message_is_dead_lettered_exactly_once(conn, ch):
    dlx_pair(ch, "src", "dead", **{"x-queue-type": "quorum", "x-delivery-limit": 2})
    ch.basic_publish("", "src", b"poison")
    ch.basic_publish("", "src", b"good")
    counts = []
    while True:
        method, props, body = ch.basic_get("src")
        if method is None:
            break
        if body == b"good":
            ch.basic_ack(method.delivery_tag)
            continue
        counts.append((props.headers or {}).get("x-delivery-count"))
        ch.basic_nack(method.delivery_tag, requeue=True)
    # Delivered 3 times (returned 3 > limit 2); x-delivery-count as in quorum queues.
    assert counts == [None, 1, 2]
    [(_, props, body)] = drain(ch, "dead")
    assert body == b"poison"
    death = props.headers["x-death"][0]
    assert (death["reason"], death["count"]) == ("delivery_limit", 1)
    assert ready(ch, "src") == 0


def test_delivery_limit_zero_drops_at_the_first_return(conn, ch):
    ch.queue_declare("q", arguments={"x-delivery-limit": 0})
    ch.basic_publish("", "q", b"m")
    method, _, _ = ch.basic_get("q")
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert ready(ch, "q") == 0


def test_lease_expiry_and_dead_owner_count_as_returns(blocking_connect, fake_clock):
    conn = blocking_connect(clock=fake_clock, visibility_timeout_ms=1000)
    ch = conn.channel()
    dlx_pair(ch, "src", "dead", **{"x-delivery-limit": 1})
    ch.basic_publish("", "src", b"m")
    # 1st return: the lease lapses.
    other = blocking_connect(clock=fake_clock, visibility_timeout_ms=1000)
    method, _, _ = other.channel().basic_get("src")
    assert method is not None
    other._engine._sessions.pop(other._session)  # stop renewing: as if hung
    fake_clock.advance(1000)
    conn._engine.upkeep()
    assert ready(ch, "src") == 1
    # 2nd return: the holder's connection closes.
    holder = blocking_connect(clock=fake_clock)
    assert holder.channel().basic_get("src")[0] is not None
    holder.close()
    assert ready(ch, "src") == 0
    assert bodies(ch, "dead") == [b"m"]


def test_channel_close_counts_as_a_return(conn, ch):
    ch.queue_declare("q", arguments={"x-delivery-limit": 0})
    ch.basic_publish("", "q", b"m")
    other = conn.channel()
    assert other.basic_get("q")[0] is not None
    other.close()
    assert ready(ch, "q") == 0


# --- priorities --------------------------------------------------------------------------


def test_priority_order_higher_first_fifo_within(conn, ch):
    ch.queue_declare("q", arguments={"x-max-priority": 5})
    sent = [(1, "a"), (5, "b"), (None, "c"), (9, "d"), (5, "e"), (1, "f"), (0, "g")]
    for priority, body in sent:
        ch.basic_publish("", "q", body, BasicProperties(priority=priority))
    # 9 is capped at x-max-priority 5; no priority counts as 0.
    assert bodies(ch, "q") == [b"b", b"d", b"e", b"a", b"f", b"c", b"g"]


def test_priority_ignored_without_x_max_priority(conn, ch):
    ch.queue_declare("q")
    for priority, body in ((1, "a"), (9, "b")):
        ch.basic_publish("", "q", body, BasicProperties(priority=priority))
    assert bodies(ch, "q") == [b"a", b"b"]


def test_requeued_message_keeps_its_place_within_its_priority(conn, ch):
    ch.queue_declare("q", arguments={"x-max-priority": 2})
    for priority, body in ((1, "a"), (1, "b"), (2, "c")):
        ch.basic_publish("", "q", body, BasicProperties(priority=priority))
    first, _, body = ch.basic_get("q")
    assert body == b"c"
    second, _, body = ch.basic_get("q")
    assert body == b"a"
    ch.basic_nack(second.delivery_tag, requeue=True)
    ch.basic_nack(first.delivery_tag, requeue=True)
    assert bodies(ch, "q") == [b"c", b"a", b"b"]


# --- alternate exchange ------------------------------------------------------------------


def test_alternate_exchange_takes_unroutable_messages(conn, ch):
    ch.exchange_declare("ae", "fanout")
    ch.queue_declare("unrouted")
    ch.queue_bind("unrouted", "ae")
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "ae"})
    ch.queue_declare("routed")
    ch.queue_bind("routed", "main", "yes")
    ch.basic_publish("main", "yes", b"1")
    ch.basic_publish("main", "no", b"2", mandatory=True)  # routed via the AE: no return
    assert bodies(ch, "routed") == [b"1"]
    [(method, _, body)] = drain(ch, "unrouted")
    # As RabbitMQ: the message keeps the exchange it was published to.
    assert (method.exchange, method.routing_key, body) == ("main", "no", b"2")


def test_alternate_exchange_chain_and_cycle(conn, ch):
    ch.exchange_declare("x1", "direct", arguments={"alternate-exchange": "x2"})
    ch.exchange_declare("x2", "direct", arguments={"alternate-exchange": "x1"})
    with pytest.raises(mqstore.UnroutableError):
        ch.basic_publish("x1", "k", b"m", mandatory=True)
    ch = conn.channel()
    ch.queue_declare("q2")
    ch.queue_bind("q2", "x2", "k")
    ch.basic_publish("x1", "k", b"m", mandatory=True)
    assert bodies(ch, "q2") == [b"m"]


def test_missing_alternate_exchange_drops(conn, ch):
    ch.exchange_declare("main", "direct", arguments={"alternate-exchange": "gone"})
    with pytest.raises(mqstore.UnroutableError):
        ch.basic_publish("main", "k", b"m", mandatory=True)


# --- queue types -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classic", "quorum"])
def test_queue_types_accepted(ch, kind):
    ch.queue_declare("q", durable=True, arguments={"x-queue-type": kind})


def test_unknown_queue_type_is_406(ch):
    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.queue_declare("q", arguments={"x-queue-type": "stream2"})
    assert info.value.reply_code == 406


def test_features_survive_reopening_the_file(blocking_connect, fake_clock, db_path):
    conn = blocking_connect(clock=fake_clock)
    ch = conn.channel()
    dlx_pair(ch, "src", "dead", **{"x-message-ttl": 100})
    ch.basic_publish("", "src", b"m")
    conn.close()
    fake_clock.advance(100)
    conn = blocking_connect(clock=fake_clock)
    ch = conn.channel()
    conn._engine.upkeep()
    assert bodies(ch, "dead") == [b"m"]


def test_queues_declared_before_0004_get_their_features(tmp_path, fake_clock):
    """A file at revision 0003 holds queues whose arguments were recorded but not enforced:
    migrating to 0004 fills the feature columns from them."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from mqstore import migrate

    path = str(tmp_path / "old.db")
    migrate.migrate(path)
    engine = sa.create_engine(f"sqlite:///{path}")
    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003")
            conn.exec_driver_sql(
                "INSERT INTO mq_queues (id, name, durable, auto_delete, arguments, "
                "consumer_timeout_ms, created_at_ms) VALUES (7, 'q', 1, 0, ?, 1000, 0)",
                (mqstore.codec.encode_table({"x-max-length": 2, "x-max-length-bytes": 100}),),
            )
            # A message already in it, stored by the older revision.
            conn.exec_driver_sql(
                "INSERT INTO mq_messages (id, exchange, routing_key, body, published_at_ms) "
                "VALUES (1, '', 'q', 'old', 0)"
            )
            conn.exec_driver_sql(
                "INSERT INTO mq_entries (queue_id, message_id, priority) VALUES (7, 1, 0)"
            )
    finally:
        engine.dispose()
    conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path, clock=fake_clock))
    try:
        assert conn._engine.run(_counts_of, "q") == ((1, 3), (1, 3))
        ch = conn.channel()
        for body in (b"a", b"b"):
            ch.basic_publish("", "q", body)
        assert conn._engine.run(_counts_of, "q") == ((2, 2), (2, 2))
        assert bodies(ch, "q") == [b"a", b"b"]
    finally:
        conn.close()


# --- properties --------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 3), st.integers(0, 12)),
        st.tuples(st.just("get"), st.booleans(), st.just(0)),
        st.tuples(st.just("settle"), st.sampled_from(["ack", "requeue", "reject"]), st.just(0)),
        st.tuples(st.just("advance"), st.integers(0, 60), st.just(0)),
        st.tuples(st.just("purge"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_length_counters_match_the_ready_entries(tmp_path_factory, ops):
    """Whatever happens to a limited queue (publishes with priorities and TTLs, gets, acks,
    requeues, rejects, expiry, purge), its trigger-kept ready_count/ready_bytes equal the
    ready entries and the limits hold; so for its drop-head dead-letter target."""
    from tests.conftest import FakeClock

    clock = FakeClock()
    path = str(tmp_path_factory.mktemp("prop") / "p.db")
    conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path, clock=clock))
    try:
        ch = conn.channel()
        ch.exchange_declare("dlx", "fanout")
        ch.queue_declare("dead", arguments={"x-max-length": 3})
        ch.queue_bind("dead", "dlx")
        args = {
            "x-max-length": 4,
            "x-max-length-bytes": 30,
            "x-max-priority": 3,
            "x-message-ttl": 50,
            "x-dead-letter-exchange": "dlx",
        }
        ch.queue_declare("q", arguments=args)
        held: list[int] = []
        for op, a, b in ops:
            if op == "publish":
                ch.basic_publish("", "q", b"x" * b, BasicProperties(priority=a))
            elif op == "get":
                method, _, _ = ch.basic_get("q", auto_ack=a)
                if method is not None and not a:
                    held.append(method.delivery_tag)
            elif op == "settle" and held:
                tag = held.pop(0)
                if a == "ack":
                    ch.basic_ack(tag)
                else:
                    ch.basic_nack(tag, requeue=a == "requeue")
            elif op == "advance":
                clock.advance(a)
            elif op == "purge":
                ch.queue_purge("q")
            conn._engine.upkeep()
            for queue, max_len, max_bytes in (("q", 4, 30), ("dead", 3, None)):
                kept, actual = conn._engine.run(_counts_of, queue)
                assert kept == actual
                assert actual[0] <= max_len
                assert max_bytes is None or actual[1] <= max_bytes
    finally:
        conn.close()


def _counts_of(tx, queue):
    kept = tx.conn.execute(
        "SELECT ready_count, ready_bytes FROM mq_queues WHERE name = ?", (queue,)
    ).fetchone()
    actual = tx.conn.execute(
        "SELECT count(*), coalesce(sum(length(coalesce(e.body, m.body))), 0) FROM mq_entries e "
        "LEFT JOIN mq_messages m ON m.id = e.message_id JOIN mq_queues q ON q.id = e.queue_id "
        "WHERE q.name = ? AND e.lease_token IS NULL",
        (queue,),
    ).fetchone()
    return tuple(kept), tuple(actual)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sent=st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=25),
)
def test_priority_order_under_requeues(tmp_path_factory, sent):
    """Higher priority first, FIFO within a priority, including messages that were
    delivered and requeued (they keep their place)."""
    path = str(tmp_path_factory.mktemp("prio") / "p.db")
    conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path))
    try:
        ch = conn.channel()
        ch.queue_declare("q", arguments={"x-max-priority": 4})
        for i, (priority, _) in enumerate(sent):
            ch.basic_publish("", "q", str(i), BasicProperties(priority=priority))
        # Take some, then requeue them all: order must be as if never taken.
        tags = []
        for _, take in sent:
            if take:
                method, _, _ = ch.basic_get("q")
                tags.append(method.delivery_tag)
        for tag in reversed(tags):
            ch.basic_nack(tag, requeue=True)
        got = [int(body) for body in bodies(ch, "q")]
        expected = sorted(range(len(sent)), key=lambda i: (-min(sent[i][0], 4), i))
        assert got == expected
    finally:
        conn.close()
