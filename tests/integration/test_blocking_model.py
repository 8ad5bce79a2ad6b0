"""Exchanges, queues and bindings through the blocking API, on a real SQLite file.

Each refusal is checked against RabbitMQ's reply code and text (RELIABILITY.md section 3).
"""

from __future__ import annotations

import pytest

import mqstore
from mqstore import ExchangeType

from .helpers import drain

LOCKED_TEXT = (
    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl' in vhost '/'. "
    "It could be originally declared on another connection or the exclusive property value "
    "does not match that of the original declaration."
)


@pytest.fixture
def conn(blocking_connect):
    return blocking_connect()


@pytest.fixture
def ch(conn):
    return conn.channel()


def declare_queues(channel, *names: str) -> None:
    for name in names:
        channel.queue_declare(name)


# --- exchanges: routing ---------------------------------------------------------------------------


def test_default_exchange_routes_by_queue_name(ch):
    declare_queues(ch, "a", "b")

    ch.basic_publish("", "b", b"to-b")
    ch.basic_publish("", "nowhere", b"dropped")

    assert drain(ch, "a") == []
    assert drain(ch, "b") == [b"to-b"]


def test_direct_exchange_routes_on_exact_key(ch):
    ch.exchange_declare("logs", "direct")
    declare_queues(ch, "errors", "infos")
    ch.queue_bind("errors", "logs", "error")
    ch.queue_bind("infos", "logs", "info")

    ch.basic_publish("logs", "error", b"e1")
    ch.basic_publish("logs", "info", b"i1")
    ch.basic_publish("logs", "error.x", b"no match")

    assert drain(ch, "errors") == [b"e1"]
    assert drain(ch, "infos") == [b"i1"]


def test_queue_bind_without_routing_key_uses_the_queue_name(ch):
    ch.exchange_declare("x", "direct")
    ch.queue_declare("q")
    ch.queue_bind("q", "x")

    ch.basic_publish("x", "q", b"m")

    assert drain(ch, "q") == [b"m"]


def test_fanout_exchange_copies_to_every_bound_queue_ignoring_key(ch):
    ch.exchange_declare("fan", ExchangeType.fanout)
    declare_queues(ch, "f1", "f2", "f3")
    for name in ("f1", "f2", "f3"):
        ch.queue_bind(name, "fan", "whatever")

    ch.basic_publish("fan", "some.other.key", b"all")

    assert [drain(ch, q) for q in ("f1", "f2", "f3")] == [[b"all"]] * 3


@pytest.mark.parametrize(
    ("pattern", "routed", "not_routed"),
    [
        ("#", ["", "a", "a.b.c"], []),
        ("a.#.b", ["a.b", "a.x.b", "a.x.y.b"], ["a", "b", "a.b.c", "x.a.b"]),
        ("*", ["a", "zz"], ["", "a.b"]),
        ("*.orange.*", ["quick.orange.rabbit"], ["orange", "quick.orange", "a.orange.b.c"]),
        ("lazy.#", ["lazy", "lazy.x", "lazy.x.y"], ["lazyx", "x.lazy"]),
        ("a.*.#", ["a.b", "a.b.c"], ["a"]),
        ("a.*.b", ["a..b", "a.x.b"], ["a.b", "a.x.y.b"]),
        ("#.a", ["a", "x.a", "x.y.a"], ["a.x"]),
        ("#.#", ["", "a", "a.b"], []),
    ],
)
def test_topic_exchange_matches_wildcards_end_to_end(ch, pattern, routed, not_routed):
    ch.exchange_declare("topics", "topic")
    ch.queue_declare("t")
    ch.queue_bind("t", "topics", pattern)

    for key in routed + not_routed:
        ch.basic_publish("topics", key, key.encode() or b"<empty>")

    assert drain(ch, "t") == [key.encode() or b"<empty>" for key in routed]


def test_topic_message_matching_two_bindings_of_one_queue_arrives_once(ch):
    ch.exchange_declare("topics", "topic")
    ch.queue_declare("t")
    ch.queue_bind("t", "topics", "a.*")
    ch.queue_bind("t", "topics", "#")

    ch.basic_publish("topics", "a.b", b"once")

    assert drain(ch, "t") == [b"once"]


def test_headers_exchange_x_match_all_and_any(ch):
    ch.exchange_declare("hdr", "headers")
    declare_queues(ch, "all", "any")
    ch.queue_bind("all", "hdr", "", {"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind("any", "hdr", "", {"x-match": "any", "format": "pdf", "type": "report"})

    def send(body: bytes, headers: dict | None) -> None:
        ch.basic_publish("hdr", "ignored", body, mqstore.BasicProperties(headers=headers))

    send(b"both", {"format": "pdf", "type": "report"})
    send(b"format-only", {"format": "pdf"})
    send(b"wrong-value", {"format": "zip", "type": "log"})
    send(b"no-headers", None)

    assert drain(ch, "all") == [b"both"]
    assert drain(ch, "any") == [b"both", b"format-only"]


def test_headers_binding_without_x_match_defaults_to_all(ch):
    ch.exchange_declare("hdr", "headers")
    ch.queue_declare("q")
    ch.queue_bind("q", "hdr", "", {"a": 1, "b": 2})

    ch.basic_publish("hdr", "", b"one", mqstore.BasicProperties(headers={"a": 1}))
    ch.basic_publish("hdr", "", b"both", mqstore.BasicProperties(headers={"a": 1, "b": 2}))

    assert drain(ch, "q") == [b"both"]


def test_headers_binding_ignores_x_keys_unless_all_with_x(ch):
    ch.exchange_declare("hdr", "headers")
    declare_queues(ch, "plain", "with-x")
    ch.queue_bind("plain", "hdr", "", {"x-match": "all", "a": 1, "x-tag": "t"})
    ch.queue_bind("with-x", "hdr", "", {"x-match": "all-with-x", "a": 1, "x-tag": "t"})

    ch.basic_publish("hdr", "", b"a-only", mqstore.BasicProperties(headers={"a": 1}))
    ch.basic_publish("hdr", "", b"a-and-x", mqstore.BasicProperties(headers={"a": 1, "x-tag": "t"}))

    assert drain(ch, "plain") == [b"a-only", b"a-and-x"]
    assert drain(ch, "with-x") == [b"a-and-x"]


def test_headers_binding_with_invalid_x_match_is_406(ch):
    ch.exchange_declare("hdr", "headers")
    ch.queue_declare("q")

    with pytest.raises(mqstore.PreconditionFailedError):
        ch.queue_bind("q", "hdr", "", {"x-match": "some"})


@pytest.mark.parametrize(
    ("exchange", "key", "args", "headers"),
    [
        ("amq.direct", "k", None, None),
        ("amq.fanout", "", None, None),
        ("amq.topic", "a.#", None, None),
        ("amq.headers", "", {"x-match": "any", "h": "v"}, {"h": "v"}),
        ("amq.match", "", {"x-match": "all", "h": "v"}, {"h": "v"}),
    ],
)
def test_predeclared_amq_exchanges_route(ch, exchange, key, args, headers):
    ch.queue_declare("q")
    ch.queue_bind("q", exchange, key, args)

    ch.basic_publish(
        exchange, "k" if key == "k" else "a.b", b"m", mqstore.BasicProperties(headers=headers)
    )

    assert drain(ch, "q") == [b"m"]


def test_passive_declare_of_amq_direct_succeeds(ch):
    ch.exchange_declare("amq.direct", "direct", passive=True)

    assert ch.is_open


# --- exchanges: declare and delete rules ----------------------------------------------------------


def test_exchange_declare_is_idempotent_and_defaults_to_direct(ch):
    ch.exchange_declare("x")
    ch.exchange_declare("x")
    ch.exchange_declare("x", "direct")

    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.exchange_declare("x", "fanout")
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': "
        "received 'fanout' but current is 'direct'"
    )


@pytest.mark.parametrize(
    ("change", "arg", "received", "current"),
    [
        (dict(durable=True), "durable", "true", "false"),
        (dict(auto_delete=True), "auto_delete", "true", "false"),
        (dict(internal=True), "internal", "true", "false"),
    ],
)
def test_exchange_redeclare_with_different_flag_is_406(ch, change, arg, received, current):
    ch.exchange_declare("x", "topic")

    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.exchange_declare("x", "topic", **change)
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange 'x' in vhost '/': "
        f"received '{received}' but current is '{current}'"
    )


def test_exchange_redeclare_failure_closes_the_channel(ch, conn):
    ch.exchange_declare("x", "direct")
    with pytest.raises(mqstore.PreconditionFailedError):
        ch.exchange_declare("x", "fanout")

    assert ch.is_closed
    with pytest.raises(mqstore.ChannelWrongStateError):
        ch.queue_declare("q")
    # The connection and the exchange survive.
    conn.channel().exchange_declare("x", "direct", passive=True)


def test_passive_declare_of_missing_exchange_is_404(ch):
    with pytest.raises(mqstore.NotFoundError) as info:
        ch.exchange_declare("x", passive=True)
    assert info.value.reply_code == 404
    assert info.value.reply_text == "NOT_FOUND - no exchange 'x' in vhost '/'"


def test_declaring_amq_prefixed_exchange_is_403(ch):
    with pytest.raises(mqstore.AccessRefusedError) as info:
        ch.exchange_declare("amq.foo", "direct")
    assert info.value.reply_code == 403
    assert info.value.reply_text == (
        "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'"
    )


def test_equivalent_redeclare_of_a_system_exchange_is_accepted(ch):
    ch.exchange_declare("amq.direct", "direct", durable=True)
    assert ch.is_open


def test_redeclaring_a_system_exchange_with_another_type_is_406(ch):
    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.exchange_declare("amq.direct", "fanout", durable=True)
    assert "inequivalent arg 'type' for exchange 'amq.direct'" in info.value.reply_text


@pytest.mark.parametrize(
    "operation",
    [
        lambda ch: ch.exchange_declare("", "direct"),
        lambda ch: ch.exchange_delete(""),
        lambda ch: ch.queue_bind("q", "", "q"),
        lambda ch: ch.queue_unbind("q", "", "q"),
    ],
    ids=["declare", "delete", "bind", "unbind"],
)
def test_default_exchange_cannot_be_declared_bound_or_deleted(ch, operation):
    ch.queue_declare("q")

    with pytest.raises(mqstore.AccessRefusedError) as info:
        operation(ch)
    assert info.value.reply_text == (
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    )


def test_deleting_amq_direct_is_403(ch, conn):
    with pytest.raises(mqstore.AccessRefusedError) as info:
        ch.exchange_delete("amq.direct")
    assert info.value.reply_text == (
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
    )
    conn.channel().exchange_declare("amq.direct", passive=True)


def test_exchange_delete_if_unused_refuses_bound_exchange(ch, conn):
    ch.exchange_declare("x")
    ch.queue_declare("q")
    ch.queue_bind("q", "x", "k")

    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.exchange_delete("x", if_unused=True)
    assert info.value.reply_text == "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use"
    conn.channel().exchange_declare("x", passive=True)


def test_exchange_delete_if_unused_deletes_unbound_exchange(ch):
    ch.exchange_declare("x")

    ch.exchange_delete("x", if_unused=True)

    with pytest.raises(mqstore.NotFoundError):
        ch.exchange_declare("x", passive=True)


def test_exchange_delete_removes_its_bindings(ch, conn):
    ch.exchange_declare("x")
    ch.queue_declare("q")
    ch.queue_bind("q", "x", "k")

    ch.exchange_delete("x")
    ch.exchange_declare("x")
    ch.basic_publish("x", "k", b"after recreate")

    assert drain(ch, "q") == []


def test_deleting_a_missing_exchange_is_ok(ch):
    result = ch.exchange_delete("never-declared")

    assert result.method.NAME == "Exchange.DeleteOk"
    assert ch.is_open


def test_unknown_exchange_type_is_406_on_the_channel(ch, conn):
    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.exchange_declare("x", "foo")
    assert info.value.reply_code == 406
    assert info.value.reply_text == "PRECONDITION_FAILED - unknown exchange type 'foo'"
    assert ch.is_closed
    assert conn.is_open


def test_publish_to_internal_exchange_is_403(ch):
    ch.exchange_declare("inner", "fanout", internal=True)

    with pytest.raises(mqstore.AccessRefusedError) as info:
        ch.basic_publish("inner", "", b"m")
    assert info.value.reply_text == (
        "ACCESS_REFUSED - cannot publish to internal exchange 'inner' in vhost '/'"
    )


def test_auto_delete_exchange_goes_with_its_last_unbind(ch):
    ch.exchange_declare("ad", "direct", auto_delete=True)
    declare_queues(ch, "q1", "q2")
    ch.queue_bind("q1", "ad", "k")
    ch.queue_bind("q2", "ad", "k")

    ch.queue_unbind("q1", "ad", "k")
    ch.exchange_declare("ad", passive=True)  # one binding left: still there
    ch.queue_unbind("q2", "ad", "k")

    with pytest.raises(mqstore.NotFoundError):
        ch.exchange_declare("ad", passive=True)


def test_auto_delete_exchange_goes_when_its_last_bound_queue_is_deleted(ch):
    ch.exchange_declare("ad", "fanout", auto_delete=True)
    ch.queue_declare("q")
    ch.queue_bind("q", "ad", "")

    ch.queue_delete("q")

    with pytest.raises(mqstore.NotFoundError):
        ch.exchange_declare("ad", passive=True)


def test_auto_delete_exchange_without_bindings_stays_until_bound(ch):
    ch.exchange_declare("ad", "direct", auto_delete=True)

    ch.exchange_declare("ad", "direct", auto_delete=True, passive=True)

    assert ch.is_open


# --- queues: declare ------------------------------------------------------------------------------


def test_queue_declare_is_idempotent_and_reports_counts(conn, ch):
    first = ch.queue_declare("q")
    ch.basic_publish("", "q", b"1")
    ch.basic_publish("", "q", b"2")
    other = conn.channel()
    other.basic_consume("q", lambda *a: None)

    again = ch.queue_declare("q")

    assert first.method.queue == "q"
    assert (first.method.message_count, first.method.consumer_count) == (0, 0)
    assert again.method.queue == "q"
    assert again.method.consumer_count == 1
    assert again.method.message_count == 2


def test_queue_declare_message_count_excludes_unacked(ch):
    ch.queue_declare("q")
    for i in range(3):
        ch.basic_publish("", "q", str(i))
    ch.basic_get("q")

    assert ch.queue_declare("q", passive=True).method.message_count == 2


@pytest.mark.parametrize(
    ("first", "second", "arg", "received", "current"),
    [
        (dict(durable=True), dict(durable=False), "durable", "'false'", "'true'"),
        (dict(), dict(auto_delete=True), "auto_delete", "'true'", "'false'"),
        (
            dict(arguments={"x-message-ttl": 1000}),
            dict(arguments={"x-message-ttl": 2000}),
            "x-message-ttl",
            "'2000'",
            "'1000'",
        ),
        (dict(arguments={"x-max-length": 5}), dict(), "x-max-length", "none", "'5'"),
    ],
)
def test_queue_redeclare_with_different_settings_is_406(ch, first, second, arg, received, current):
    ch.queue_declare("q", **first)

    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.queue_declare("q", **second)
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue 'q' in vhost '/': "
        f"received {received} but current is {current}"
    )


def test_queue_redeclare_with_unknown_x_argument_changed_is_accepted(ch):
    ch.queue_declare("q", arguments={"x-foo": 1})

    result = ch.queue_declare("q", arguments={"x-foo": 2})

    assert result.method.queue == "q"


def test_passive_queue_declare_of_missing_queue_is_404(ch):
    with pytest.raises(mqstore.NotFoundError) as info:
        ch.queue_declare("nope", passive=True)
    assert info.value.reply_text == "NOT_FOUND - no queue 'nope' in vhost '/'"


def test_passive_queue_declare_ignores_flags_and_reports_counts(ch):
    ch.queue_declare("q", durable=True)
    ch.basic_publish("", "q", b"m")

    result = ch.queue_declare("q", passive=True)

    assert (result.method.queue, result.method.message_count) == ("q", 1)


def test_server_named_queue_gets_a_unique_amq_gen_name(ch):
    first = ch.queue_declare("", exclusive=True).method.queue
    second = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", first, b"to the generated name")

    assert first.startswith("amq.gen-")
    assert second.startswith("amq.gen-")
    assert first != second
    assert drain(ch, first) == [b"to the generated name"]


def test_declaring_amq_prefixed_queue_is_403(ch):
    with pytest.raises(mqstore.AccessRefusedError) as info:
        ch.queue_declare("amq.foo")
    assert info.value.reply_text == (
        "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'"
    )


def test_queue_name_longer_than_255_bytes_is_refused(ch):
    ch.queue_declare("é" * 127)  # 254 bytes: fine

    with pytest.raises(mqstore.PreconditionFailedError):
        ch.queue_declare("é" * 128)  # 256 bytes


def test_cr_and_lf_are_stripped_from_names(ch):
    result = ch.queue_declare("a\r\nb")

    assert result.method.queue == "ab"


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        (
            {"x-message-ttl": -1},
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}",
        ),
        ({"x-expires": 0}, "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"),
        (
            {"x-max-length": "abc"},
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': expected integer, got",
        ),
        (
            {"x-max-length": -5},
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-5}",
        ),
        (
            {"x-max-priority": 256},
            "invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}",
        ),
        (
            {"x-overflow": "bogus"},
            "invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow",
        ),
        ({"x-queue-type": "bogus"}, "unsupported queue type 'bogus'"),
        (
            {"x-dead-letter-routing-key": "k"},
            "invalid arg 'x-dead-letter-routing-key' for "
            "queue 'q' in vhost '/': routing_key_but_no_dlx_defined",
        ),
    ],
)
def test_invalid_queue_argument_is_406_naming_it(conn, ch, arguments, text):
    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.queue_declare("q", arguments=arguments)
    assert info.value.reply_code == 406
    assert info.value.reply_text.startswith("PRECONDITION_FAILED - " + text)
    with pytest.raises(mqstore.NotFoundError):
        conn.channel().queue_declare("q", passive=True)


def test_dead_letter_exchange_naming_a_missing_exchange_is_accepted(ch):
    result = ch.queue_declare(
        "q", arguments={"x-dead-letter-exchange": "missing", "x-dead-letter-routing-key": "k"}
    )

    assert result.method.queue == "q"


# --- queues: exclusive and auto-delete ------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        lambda ch: ch.queue_declare("excl", passive=True),
        lambda ch: ch.queue_declare("excl", exclusive=True),
        lambda ch: ch.basic_consume("excl", lambda *a: None),
        lambda ch: ch.basic_get("excl"),
        lambda ch: ch.queue_delete("excl"),
        lambda ch: ch.queue_purge("excl"),
        lambda ch: ch.queue_bind("excl", "amq.direct", "k"),
    ],
    ids=["passive-declare", "declare", "consume", "get", "delete", "purge", "bind"],
)
def test_exclusive_queue_is_locked_for_other_connections(blocking_connect, operation):
    owner = blocking_connect().channel()
    owner.queue_declare("excl", exclusive=True)
    owner.basic_publish("", "excl", b"mine")
    other = blocking_connect().channel()

    with pytest.raises(mqstore.ResourceLockedError) as info:
        operation(other)
    assert info.value.reply_code == 405
    assert info.value.reply_text == LOCKED_TEXT
    assert owner.queue_declare("excl", passive=True).method.message_count == 1


def test_owner_redeclaring_exclusive_queue_as_non_exclusive_is_405(conn):
    conn.channel().queue_declare("excl", exclusive=True)

    with pytest.raises(mqstore.ResourceLockedError) as info:
        conn.channel().queue_declare("excl")
    assert info.value.reply_text == LOCKED_TEXT


def test_exclusive_queue_is_usable_from_another_channel_of_its_connection(conn):
    conn.channel().queue_declare("excl", exclusive=True)
    other = conn.channel()

    other.basic_publish("", "excl", b"m")

    assert drain(other, "excl") == [b"m"]


def test_exclusive_queue_vanishes_when_its_connection_closes(blocking_connect):
    owner = blocking_connect()
    owner.channel().queue_declare("excl", exclusive=True)
    watcher = blocking_connect().channel()

    owner.close()

    with pytest.raises(mqstore.NotFoundError):
        watcher.queue_declare("excl", passive=True)


def test_auto_delete_queue_vanishes_when_its_last_consumer_is_cancelled(ch, conn):
    ch.queue_declare("ad", auto_delete=True)
    first = ch.basic_consume("ad", lambda *a: None)
    second = ch.basic_consume("ad", lambda *a: None)

    ch.basic_cancel(first)
    assert ch.queue_declare("ad", passive=True, auto_delete=True).method.consumer_count == 1
    ch.basic_cancel(second)

    with pytest.raises(mqstore.NotFoundError):
        conn.channel().queue_declare("ad", passive=True)


def test_auto_delete_queue_without_consumers_stays(ch):
    ch.queue_declare("ad", auto_delete=True)
    ch.basic_publish("", "ad", b"m")

    assert ch.queue_declare("ad", passive=True).method.message_count == 1


def test_auto_delete_queue_vanishes_when_its_consumer_channel_closes(conn):
    consumer = conn.channel()
    consumer.queue_declare("ad", auto_delete=True)
    consumer.basic_consume("ad", lambda *a: None)

    consumer.close()

    with pytest.raises(mqstore.NotFoundError):
        conn.channel().queue_declare("ad", passive=True)


# --- queues: delete and purge ---------------------------------------------------------------------


def test_queue_delete_if_unused_refuses_while_a_consumer_exists(conn, ch):
    ch.queue_declare("q")
    conn.channel().basic_consume("q", lambda *a: None)

    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.queue_delete("q", if_unused=True)
    assert info.value.reply_text == "PRECONDITION_FAILED - queue 'q' in vhost '/' in use"


def test_queue_delete_if_empty_refuses_non_empty_queue(conn, ch):
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"m")

    with pytest.raises(mqstore.PreconditionFailedError) as info:
        ch.queue_delete("q", if_empty=True)
    assert info.value.reply_text == "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty"
    assert conn.channel().queue_declare("q", passive=True).method.message_count == 1


def test_queue_delete_returns_ready_count_and_removes_the_queue(ch):
    ch.queue_declare("q")
    for i in range(3):
        ch.basic_publish("", "q", str(i))

    result = ch.queue_delete("q")

    assert result.method.message_count == 3
    with pytest.raises(mqstore.NotFoundError):
        ch.queue_declare("q", passive=True)


def test_queue_delete_of_missing_queue_is_ok_with_count_0(ch):
    result = ch.queue_delete("nope")

    assert result.method.message_count == 0
    assert ch.is_open


def test_queue_purge_returns_count_and_leaves_unacked_alone(ch):
    ch.queue_declare("q")
    for body in (b"held", b"b", b"c"):
        ch.basic_publish("", "q", body)
    method, _, _ = ch.basic_get("q")

    purged = ch.queue_purge("q")
    ch.basic_nack(method.delivery_tag, requeue=True)

    assert purged.method.message_count == 2
    assert drain(ch, "q") == [b"held"]


def test_queue_purge_of_missing_queue_is_404(ch):
    with pytest.raises(mqstore.NotFoundError):
        ch.queue_purge("nope")


# --- qos ------------------------------------------------------------------------------------------


def test_negative_prefetch_count_is_value_error(ch):
    with pytest.raises(ValueError, match="prefetch_count"):
        ch.basic_qos(prefetch_count=-1)


def test_prefetch_size_is_not_supported(ch):
    with pytest.raises(mqstore.exceptions.FeatureNotSupportedError) as info:
        ch.basic_qos(prefetch_size=1)
    assert info.value.reply_code == 540
    assert info.value.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (1)"


# --- bindings -------------------------------------------------------------------------------------


def test_same_key_bound_to_several_queues_reaches_each(ch):
    ch.exchange_declare("x", "direct")
    declare_queues(ch, "q1", "q2", "q3")
    for name in ("q1", "q2", "q3"):
        ch.queue_bind(name, "x", "same")

    ch.basic_publish("x", "same", b"m")

    assert [drain(ch, q) for q in ("q1", "q2", "q3")] == [[b"m"]] * 3


def test_queue_bound_to_several_exchanges_receives_from_each(ch):
    ch.exchange_declare("d", "direct")
    ch.exchange_declare("f", "fanout")
    ch.queue_declare("q")
    ch.queue_bind("q", "d", "k")
    ch.queue_bind("q", "f", "")

    ch.basic_publish("d", "k", b"from-d")
    ch.basic_publish("f", "x", b"from-f")
    ch.basic_publish("", "q", b"from-default")

    assert drain(ch, "q") == [b"from-d", b"from-f", b"from-default"]


def test_bind_to_missing_exchange_is_404(ch):
    ch.queue_declare("q")

    with pytest.raises(mqstore.NotFoundError) as info:
        ch.queue_bind("q", "nope", "k")
    assert info.value.reply_text == "NOT_FOUND - no exchange 'nope' in vhost '/'"


def test_bind_missing_queue_is_404(ch):
    ch.exchange_declare("x")

    with pytest.raises(mqstore.NotFoundError) as info:
        ch.queue_bind("nope", "x", "k")
    assert info.value.reply_text == "NOT_FOUND - no queue 'nope' in vhost '/'"


def test_unbind_stops_routing_and_is_idempotent(ch):
    ch.exchange_declare("x")
    ch.queue_declare("q")
    ch.queue_bind("q", "x", "k")

    ch.queue_unbind("q", "x", "k")
    ch.queue_unbind("q", "x", "k")
    ch.queue_unbind("q", "x", "never-bound")
    ch.basic_publish("x", "k", b"m")

    assert ch.is_open
    assert drain(ch, "q") == []


def test_rebinding_the_same_binding_does_not_duplicate_deliveries(ch):
    ch.exchange_declare("x", "topic")
    ch.queue_declare("q")
    for _ in range(3):
        ch.queue_bind("q", "x", "a.*")
    ch.queue_bind("q", "x", "a.b")  # a second binding that also matches

    ch.basic_publish("x", "a.b", b"once")

    assert drain(ch, "q") == [b"once"]


def test_bindings_differing_only_in_arguments_are_distinct(ch):
    ch.exchange_declare("h", "headers")
    ch.queue_declare("q")
    ch.queue_bind("q", "h", "", {"x-match": "all", "a": 1})
    ch.queue_bind("q", "h", "", {"x-match": "all", "b": 2})

    ch.queue_unbind("q", "h", "", {"x-match": "all", "a": 1})
    ch.basic_publish("h", "", b"a", mqstore.BasicProperties(headers={"a": 1}))
    ch.basic_publish("h", "", b"b", mqstore.BasicProperties(headers={"b": 2}))

    assert drain(ch, "q") == [b"b"]
