"""The queue features over AMQP, with unmodified pika against ``mqstore serve``: a refused
publish is a Basic.Nack under confirms, x-death arrives as RabbitMQ sends it, and so on.

The server runs in its own process on the real clock, so TTLs here are short real times."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
import pytest

WAIT_S = 15


@pytest.fixture
def channel(params) -> Any:
    with pika.BlockingConnection(params) as conn:
        yield conn.channel()


def drain(ch: Any, queue: str) -> list[tuple[Any, Any, bytes]]:
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))


def wait_for(ch: Any, queue: str, count: int) -> list[tuple[Any, Any, bytes]]:
    """Drain ``queue`` until ``count`` messages came (the server's upkeep sweeps expired
    messages every half second)."""
    got: list[tuple[Any, Any, bytes]] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < count and time.monotonic() < deadline:
        got.extend(drain(ch, queue))
        if len(got) < count:
            time.sleep(0.05)
    return got


def dlx_pair(ch: Any, name: str, **args: Any) -> tuple[str, str]:
    source, dead, dlx = f"{name}-src", f"{name}-dead", f"{name}-dlx"
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx, **args})
    return source, dead


def test_reject_publish_is_a_basic_nack_under_confirms(channel, name):
    channel.queue_declare(name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    channel.basic_publish("", name, b"a")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", name, b"b")
    assert channel.is_open
    assert [body for _, _, body in drain(channel, name)] == [b"a"]
    channel.basic_publish("", name, b"c")  # room again: acked
    assert [body for _, _, body in drain(channel, name)] == [b"c"]


def test_reject_publish_without_confirms_drops_silently(channel, name):
    channel.queue_declare(name, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    channel.basic_publish("", name, b"a")
    assert channel.queue_declare(name, passive=True).method.message_count == 0
    assert channel.is_open


def test_reject_publish_dlx_nacks_and_dead_letters(channel, name):
    source, dead = dlx_pair(
        channel, name, **{"x-max-length": 0, "x-overflow": "reject-publish-dlx"}
    )
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", source, b"m")
    [(_, props, body)] = drain(channel, dead)
    assert body == b"m"
    assert props.headers["x-death"][0]["reason"] == "maxlen"


def test_ttl_expired_message_never_delivered_and_dead_lettered(channel, name):
    source, dead = dlx_pair(channel, name, **{"x-message-ttl": 60_000})
    channel.basic_publish(
        "",
        source,
        b"m",
        pika.BasicProperties(expiration="50", headers={"n": 1, "s": "x"}, message_id="mid"),
    )
    channel.basic_publish("", source, b"stays")
    time.sleep(0.1)
    assert [body for _, _, body in drain(channel, source)] == [b"stays"]
    [(method, props, body)] = wait_for(channel, dead, 1)
    assert body == b"m"
    assert (method.exchange, method.routing_key) == (f"{name}-dlx", source)
    assert props.expiration is None
    assert props.message_id == "mid"
    headers = props.headers
    assert (headers["n"], headers["s"]) == (1, "x")
    [death] = headers["x-death"]
    assert death["queue"] == source
    assert death["reason"] == "expired"
    assert death["count"] == 1
    assert death["exchange"] == ""
    assert death["routing-keys"] == [source]
    assert death["original-expiration"] == "50"
    assert isinstance(death["time"], datetime)
    assert headers["x-first-death-queue"] == source
    assert headers["x-first-death-reason"] == "expired"
    assert headers["x-first-death-exchange"] == ""


def test_x_death_after_reject_and_count_increment(channel, name):
    loop = f"{name}-loop"
    channel.queue_declare(loop, arguments={"x-dead-letter-exchange": ""})
    channel.basic_publish("", loop, b"m")
    for expected in (None, 1, 2):
        method, props, _ = channel.basic_get(loop)
        deaths = (props.headers or {}).get("x-death")
        assert (deaths[0]["count"] if deaths else None) == expected
        channel.basic_reject(method.delivery_tag, requeue=False)
    [(_, props, _)] = drain(channel, loop)
    assert [(d["queue"], d["reason"], d["count"]) for d in props.headers["x-death"]] == [
        (loop, "rejected", 3)
    ]


def test_drop_head_with_dlx(channel, name):
    source, dead = dlx_pair(channel, name, **{"x-max-length": 1})
    for body in (b"1", b"2", b"3"):
        channel.basic_publish("", source, body)
    assert [body for _, _, body in drain(channel, source)] == [b"3"]
    dropped = drain(channel, dead)
    assert [body for _, _, body in dropped] == [b"1", b"2"]
    assert {p.headers["x-death"][0]["reason"] for _, p, _ in dropped} == {"maxlen"}


def test_poison_message_dead_lettered_exactly_once(channel, name):
    source, dead = dlx_pair(channel, name, **{"x-queue-type": "quorum", "x-delivery-limit": 2})
    channel.basic_publish("", source, b"poison")
    seen = []
    while True:
        method, props, _ = channel.basic_get(source)
        if method is None:
            break
        seen.append((props.headers or {}).get("x-delivery-count"))
        channel.basic_nack(method.delivery_tag, requeue=True)
    assert seen == [None, 1, 2]
    [(_, props, body)] = drain(channel, dead)
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert drain(channel, dead) == []


def test_dead_letter_cycle_is_dropped(channel, name):
    channel.queue_declare(name, arguments={"x-dead-letter-exchange": "", "x-message-ttl": 20})
    channel.basic_publish("", name, b"m")
    time.sleep(0.05)
    assert drain(channel, name) == []
    time.sleep(0.6)  # an upkeep round: nothing comes back
    assert channel.queue_declare(name, passive=True).method.message_count == 0


def test_alternate_exchange(channel, name):
    ae, main, queue = f"{name}-ae", f"{name}-main", f"{name}-unrouted"
    channel.exchange_declare(ae, "fanout")
    channel.queue_declare(queue)
    channel.queue_bind(queue, ae)
    channel.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    channel.confirm_delivery()
    channel.basic_publish(main, "nowhere", b"m", mandatory=True)  # no UnroutableError
    [(method, _, body)] = drain(channel, queue)
    assert (method.exchange, method.routing_key, body) == (main, "nowhere", b"m")


def test_priority_order(channel, name):
    channel.queue_declare(name, arguments={"x-max-priority": 5})
    for priority, body in ((0, b"low"), (5, b"high-1"), (2, b"mid"), (5, b"high-2")):
        channel.basic_publish("", name, body, pika.BasicProperties(priority=priority))
    assert [body for _, _, body in drain(channel, name)] == [b"high-1", b"high-2", b"mid", b"low"]


def test_x_expires_deletes_an_unused_queue(params, name):
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        ch.queue_declare(name, arguments={"x-expires": 100})
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                ch.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 404
                return
        pytest.fail("the queue did not expire")


def test_unknown_queue_type_is_406(channel, name):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(name, arguments={"x-queue-type": "bogus"})
    assert info.value.reply_code == 406
