"""Delayed delivery (x-delay header in ms, ``delay=`` in seconds): scheduled messages are
stored at once, stay out of the ready index until due, survive restarts and SIGKILL, and
are promoted lazily by a lease or by the upkeep thread (which wakes consumers).

Most tests use a ManualClock and run the engine's upkeep by hand; the timing tests use the
real clock."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest

import mqstore
from mqstore import BasicProperties
from mqstore.delay import MAX_DELAY_MS, delay_ms


@pytest.fixture
def conn(blocking_connect, fake_clock):
    return blocking_connect(clock=fake_clock)


@pytest.fixture
def ch(conn):
    return conn.channel()


def get(ch, queue: str) -> bytes | None:
    return ch.basic_get(queue, auto_ack=True)[2]


def ready(ch, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def hdr(ms: object) -> BasicProperties:
    return BasicProperties(headers={"x-delay": ms})


# --- the delay itself ---------------------------------------------------------------------


def test_delay_argument_is_seconds_and_message_waits(ch, fake_clock):
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"later", delay=2)
    ch.basic_publish("", "q", b"now")
    assert ready(ch, "q") == 1  # a scheduled message is not in the queue yet
    assert get(ch, "q") == b"now"
    assert get(ch, "q") is None
    fake_clock.advance(1999)
    assert get(ch, "q") is None
    fake_clock.advance(1)
    # No sweep ran: the lease promotes what is due itself.
    assert get(ch, "q") == b"later"


def test_x_delay_header_is_milliseconds(ch, fake_clock):
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"h", hdr(250))
    fake_clock.advance(249)
    assert get(ch, "q") is None
    fake_clock.advance(1)
    method, props, body = ch.basic_get("q", auto_ack=True)
    assert body == b"h"
    assert props.headers["x-delay"] == 250  # kept, as the plugin keeps it
    assert not method.redelivered


def test_delays_order_by_due_time_then_queue_order(ch, fake_clock):
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"c", delay=0.3)
    ch.basic_publish("", "q", b"a", delay=0.1)
    ch.basic_publish("", "q", b"b", delay=timedelta(milliseconds=200))
    fake_clock.advance(300)
    conn_engine_upkeep(ch)
    assert [get(ch, "q") for _ in range(3)] == [b"c", b"a", b"b"]  # all due: FIFO by publish
    ch.basic_publish("", "q", b"2", delay=0.2)
    ch.basic_publish("", "q", b"1", delay=0.1)
    fake_clock.advance(100)
    assert get(ch, "q") == b"1"
    fake_clock.advance(100)
    assert get(ch, "q") == b"2"


def conn_engine_upkeep(ch) -> None:
    ch.connection._engine.upkeep()


def test_zero_negative_and_bad_headers_deliver_at_once(ch):
    ch.queue_declare("q")
    for value in (0, -5, "soon", None, True):
        ch.basic_publish("", "q", repr(value).encode(), hdr(value))
    ch.basic_publish("", "q", b"zero", delay=0)
    assert ready(ch, "q") == 6


def test_delay_argument_is_checked(ch):
    ch.queue_declare("q")
    with pytest.raises(ValueError):
        ch.basic_publish("", "q", b"x", delay=-1)
    with pytest.raises(TypeError):
        ch.basic_publish("", "q", b"x", delay="5")
    assert delay_ms(None, 0.0001) == 1  # rounded up, never early
    assert delay_ms({"x-delay": 2**40}, None) == MAX_DELAY_MS
    assert delay_ms({"x-delay": 10}, 1) == 1000  # delay= wins


def test_delay_wins_over_header_in_publish(ch, fake_clock):
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"x", hdr(10_000), delay=0.05)
    fake_clock.advance(50)
    assert get(ch, "q") == b"x"


def test_fanout_delay_reaches_every_queue_once_due(ch, fake_clock):
    ch.exchange_declare("fan", "fanout")
    for q in ("a", "b"):
        ch.queue_declare(q)
        ch.queue_bind(q, "fan")
    ch.basic_publish("fan", "", b"m", delay=1)
    assert (ready(ch, "a"), ready(ch, "b")) == (0, 0)
    fake_clock.advance(1000)
    conn_engine_upkeep(ch)
    assert (ready(ch, "a"), ready(ch, "b")) == (1, 1)


def test_unroutable_delayed_mandatory_is_returned_at_publish(ch):
    with pytest.raises(mqstore.UnroutableError):
        ch.basic_publish("", "nowhere", b"x", mandatory=True, delay=1)


def test_priority_applies_once_due(ch, fake_clock):
    ch.queue_declare("q", arguments={"x-max-priority": 9})
    ch.basic_publish("", "q", b"low")
    ch.basic_publish("", "q", b"high", BasicProperties(priority=9), delay=0.01)
    fake_clock.advance(10)
    assert get(ch, "q") == b"high"


# --- interplay with other features ---------------------------------------------------------


def test_ttl_starts_when_due(ch, fake_clock):
    ch.queue_declare("q", arguments={"x-message-ttl": 100})
    ch.basic_publish("", "q", b"x", delay=1)
    fake_clock.advance(1050)  # past delay, within TTL counted from the due time
    assert get(ch, "q") == b"x"
    ch.basic_publish("", "q", b"y", delay=1)
    fake_clock.advance(1100)
    assert get(ch, "q") is None  # expired 100 ms after it became deliverable


def test_expired_after_delay_is_dead_lettered(ch, fake_clock):
    ch.exchange_declare("dlx", "fanout")
    ch.queue_declare("dead")
    ch.queue_bind("dead", "dlx")
    ch.queue_declare("q", arguments={"x-message-ttl": 10, "x-dead-letter-exchange": "dlx"})
    ch.basic_publish("", "q", b"x", delay=0.5)
    fake_clock.advance(600)
    conn_engine_upkeep(ch)
    _method, props, body = ch.basic_get("dead", auto_ack=True)
    assert body == b"x"
    assert props.headers["x-death"][0]["reason"] == "expired"


def test_scheduled_messages_do_not_count_toward_length_limit(ch, fake_clock):
    ch.queue_declare("q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", "q", b"later", delay=1)
    ch.basic_publish("", "q", b"now")  # accepted: the delayed one is not in the queue
    fake_clock.advance(1000)
    conn_engine_upkeep(ch)
    assert ready(ch, "q") == 2  # promotion may overfill a reject-publish queue (documented)
    ch.queue_declare("h", arguments={"x-max-length": 1})  # drop-head
    ch.basic_publish("", "h", b"old")
    ch.basic_publish("", "h", b"new", delay=1)
    fake_clock.advance(1000)
    conn_engine_upkeep(ch)
    assert ready(ch, "h") == 1
    assert get(ch, "h") == b"new"


def test_purge_leaves_scheduled_messages(ch, fake_clock):
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"x", delay=1)
    ch.basic_publish("", "q", b"y")
    assert ch.queue_purge("q").method.message_count == 1
    fake_clock.advance(1000)
    assert get(ch, "q") == b"x"


def test_queue_delete_drops_scheduled_messages(ch, fake_clock, db_path):
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"x", delay=1)
    ch.queue_delete("q")
    fake_clock.advance(1000)
    conn_engine_upkeep(ch)
    import sqlite3

    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*) FROM mq_messages").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM mq_entries").fetchone()[0] == 0


def test_x_delayed_message_exchange_routes_as_its_delayed_type(ch, fake_clock):
    args = {"x-delayed-type": "direct"}
    ch.exchange_declare("delayed", "x-delayed-message", arguments=args)
    ch.exchange_declare("delayed", "x-delayed-message", arguments=args)  # equivalent
    ch.queue_declare("q")
    ch.queue_bind("q", "delayed", "k")
    ch.basic_publish("delayed", "k", b"x", hdr(100))
    ch.basic_publish("delayed", "other", b"dropped", hdr(100))
    assert get(ch, "q") is None
    fake_clock.advance(100)
    assert get(ch, "q") == b"x"
    assert get(ch, "q") is None


def test_x_delayed_message_needs_its_type(conn):
    ch = conn.channel()
    with pytest.raises(mqstore.errors.PreconditionFailedError):
        ch.exchange_declare("bad", "x-delayed-message")


# --- restarts, crashes, boots --------------------------------------------------------------


def test_scheduled_message_survives_restart(blocking_connect, fake_clock):
    first = blocking_connect(clock=fake_clock)
    ch = first.channel()
    ch.queue_declare("q", durable=True)
    ch.basic_publish("", "q", b"x", delay=5)
    first.close()
    fake_clock.advance(5000)
    second = blocking_connect(clock=mqstore.testing.ManualClock(wall_ms=fake_clock.wall_ms()))
    assert get(second.channel(), "q") == b"x"


def test_reboot_does_not_release_scheduled_messages(blocking_connect, fake_clock, db_path):
    conn = blocking_connect(clock=fake_clock)
    ch = conn.channel()
    ch.queue_declare("q")
    ch.basic_publish("", "q", b"x", delay=5)
    # What the engine does after a host reboot: every lease is void.
    conn._engine.run(mqstore.store.void_all_leases)
    assert get(ch, "q") is None
    fake_clock.advance(5000)
    assert get(ch, "q") == b"x"


CHILD = r"""
import sys, mqstore
conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=sys.argv[1]))
ch = conn.channel()
ch.queue_declare("q", durable=True)
ch.basic_publish("", "q", b"delayed", delay=float(sys.argv[2]))
print("published", flush=True)
import time
time.sleep(60)
"""


def test_scheduled_message_survives_sigkill(db_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_path, "0.8"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "published"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    started = time.monotonic()
    with mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db_path)) as conn:
        ch = conn.channel()
        got = None
        for _method, _props, body in ch.consume("q", auto_ack=True, inactivity_timeout=5):
            got = body
            break
        assert got == b"delayed"
        assert time.monotonic() - started < 5


# --- the upkeep thread wakes consumers on time ------------------------------------------------


def test_consumer_is_woken_when_due_real_clock(blocking_connect):
    conn = blocking_connect()
    ch = conn.channel()
    ch.queue_declare("q")
    lateness = []
    for delay in (0.05, 0.15, 0.3):
        sent = time.monotonic()
        ch.basic_publish("", "q", b"x", delay=delay)
        for method, _props, _body in ch.consume("q", inactivity_timeout=3):
            assert method is not None
            lateness.append(time.monotonic() - sent - delay)
            ch.basic_ack(method.delivery_tag)
            break
        ch.cancel()
    assert all(-0.002 < late < 0.2 for late in lateness), lateness


def test_upkeep_sleeps_until_next_due(blocking_connect):
    conn = blocking_connect()
    eng = conn._engine
    ch = conn.channel()
    ch.queue_declare("q")
    assert eng._upkeep_wait() == pytest.approx(eng._upkeep_interval)
    ch.basic_publish("", "q", b"x", delay=0.1)
    assert eng._upkeep_wait() <= 0.1
    ch.basic_publish("", "q", b"y", delay=100)  # later: does not postpone the sooner one
    assert eng._upkeep_wait() <= 0.1


def test_other_process_delay_is_fired_by_any_engine(db_path):
    """A publisher that exits before the message is due: the consumer's own upkeep fires it."""
    code = (
        "import sys, mqstore\n"
        "c = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=sys.argv[1]))\n"
        "ch = c.channel(); ch.queue_declare('q')\n"
        "ch.basic_publish('', 'q', b'x', delay=0.3); c.close()\n"
    )
    with mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db_path)) as conn:
        ch = conn.channel()
        ch.queue_declare("q")
        subprocess.run([sys.executable, "-c", code, db_path], check=True)
        for _method, _props, body in ch.consume("q", auto_ack=True, inactivity_timeout=3):
            assert body == b"x"  # None: not fired within 3 s
            break


# --- asyncio -------------------------------------------------------------------------------


def test_asyncio_delay(db_path):
    async def main() -> float:
        conn = await mqstore.aio.connect(db_path)
        try:
            ch = await conn.channel()
            await ch.queue_declare("q")
            sent = time.monotonic()
            await ch.basic_publish("", "q", b"x", delay=0.1)
            await ch.basic_publish("", "q", b"h", hdr(150))
            got = []
            async for delivery in ch.consume("q", auto_ack=True):
                got.append((delivery.body, time.monotonic() - sent))
                if len(got) == 2:
                    break
            assert [b for b, _ in got] == [b"x", b"h"]
            return got[0][1]
        finally:
            await conn.close()

    elapsed = asyncio.run(asyncio.wait_for(main(), 10))
    assert 0.099 <= elapsed < 0.5
