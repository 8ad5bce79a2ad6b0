"""Single active consumer (``x-single-active-consumer``) and consumer priorities
(``x-priority``), within a channel, across connections and across processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

import mqstore

SAC = {"x-single-active-consumer": True}


def pump(*conns, seconds: float = 0.3) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for conn in conns:
            conn.process_data_events(time_limit=0.01)


def collector(out: list, name: str, ack: bool = True):
    def on_message(ch, method, props, body):
        out.append((name, body))
        if ack:
            ch.basic_ack(method.delivery_tag)

    return on_message


# --- single active consumer ------------------------------------------------------------------


def test_only_the_first_consumer_gets_messages(blocking_connect):
    a, b = blocking_connect(), blocking_connect()
    cha, chb = a.channel(), b.channel()
    cha.queue_declare("q", arguments=SAC)
    got: list = []
    cha.basic_consume("q", collector(got, "a"))
    chb.basic_consume("q", collector(got, "b"))
    for i in range(10):
        cha.basic_publish("", "q", str(i))
    pump(a, b)
    assert [n for n, _ in got] == ["a"] * 10
    assert [b for _, b in got] == [str(i).encode() for i in range(10)]  # in order


def test_two_consumers_on_one_channel(blocking_connect):
    conn = blocking_connect()
    ch = conn.channel()
    ch.queue_declare("q", arguments=SAC)
    got: list = []
    ch.basic_consume("q", collector(got, "first"))
    ch.basic_consume("q", collector(got, "second"))
    for i in range(6):
        ch.basic_publish("", "q", str(i))
    pump(conn)
    assert {n for n, _ in got} == {"first"}
    assert len(got) == 6


def test_failover_on_cancel_close_and_unacked_redelivered(blocking_connect):
    a, b = blocking_connect(), blocking_connect()
    cha, chb = a.channel(), b.channel()
    cha.queue_declare("q", arguments=SAC)
    held: list = []
    got: list = []
    tag = cha.basic_consume("q", collector(held, "a", ack=False))
    chb.basic_consume("q", collector(got, "b"))
    cha.basic_publish("", "q", b"1")
    pump(a, b)
    assert held == [("a", b"1")] and got == []
    cha.basic_cancel(tag)  # unacked stays with a until its channel closes
    cha.basic_publish("", "q", b"2")
    pump(a, b)
    assert got == [("b", b"2")]
    cha.close()  # requeues "1": b is active now and gets it
    pump(a, b)
    assert got == [("b", b"2"), ("b", b"1")]


CHILD = r"""
import sys, mqstore
conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=sys.argv[1]))
ch = conn.channel()
ch.queue_declare("q", arguments={"x-single-active-consumer": True})
def on_message(ch, method, props, body):
    print(body.decode(), flush=True)
    ch.basic_ack(method.delivery_tag)
ch.basic_consume("q", on_message)
print("ready", flush=True)
ch.start_consuming()
"""


def test_failover_across_processes_when_the_active_one_is_killed(db_path):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        with mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db_path)) as conn:
            ch = conn.channel()
            got: list = []
            ch.basic_consume("q", collector(got, "parent"))
            ch.basic_publish("", "q", b"to-child")
            assert child.stdout.readline().strip() == "to-child"
            pump(conn, seconds=0.2)
            assert got == []
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            ch.basic_publish("", "q", b"to-parent")
            # The dead process's session is reaped by this one's upkeep: failover.
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
            assert got == [("parent", b"to-parent")]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def test_sac_asyncio(db_path):
    async def main() -> list[str]:
        c1 = await mqstore.aio.connect(db_path)
        c2 = await mqstore.aio.connect(db_path)
        try:
            ch1, ch2 = await c1.channel(), await c2.channel()
            await ch1.queue_declare("q", arguments=SAC)
            got: list[str] = []

            async def on1(ch, method, props, body):
                got.append("one")
                await ch.basic_ack(method.delivery_tag)

            async def on2(ch, method, props, body):
                got.append("two")
                await ch.basic_ack(method.delivery_tag)

            await ch1.basic_consume("q", on1)
            await ch2.basic_consume("q", on2)
            for _ in range(5):
                await ch2.basic_publish("", "q", b"x")
            await asyncio.sleep(0.3)
            await ch1.close()
            await ch2.basic_publish("", "q", b"y")
            await asyncio.sleep(0.3)
            return got
        finally:
            await c1.close()
            await c2.close()

    assert asyncio.run(main()) == ["one"] * 5 + ["two"]


# --- consumer priorities ---------------------------------------------------------------------


def test_higher_priority_consumer_gets_messages_while_it_has_capacity(blocking_connect):
    hi_conn, lo_conn = blocking_connect(), blocking_connect()
    hi, lo = hi_conn.channel(), lo_conn.channel()
    hi.queue_declare("q")
    got: list = []
    lo.basic_consume("q", collector(got, "lo"))
    hi.basic_consume("q", collector(got, "hi"), arguments={"x-priority": 10})
    for i in range(10):
        hi.basic_publish("", "q", str(i))
    pump(hi_conn, lo_conn)
    assert [n for n, _ in got] == ["hi"] * 10


def test_lower_priority_takes_over_when_higher_is_full(blocking_connect):
    hi_conn, lo_conn = blocking_connect(), blocking_connect()
    hi, lo = hi_conn.channel(), lo_conn.channel()
    hi.queue_declare("q")
    hi.basic_qos(prefetch_count=2)
    held: list = []
    got: list = []
    hi.basic_consume("q", collector(held, "hi", ack=False), arguments={"x-priority": 5})
    lo.basic_consume("q", collector(got, "lo"))
    for i in range(5):
        hi.basic_publish("", "q", str(i))
    pump(hi_conn, lo_conn)
    assert len(held) == 2  # its window
    assert len(got) == 3  # the rest, because the high-priority consumer was full
    # Once it has room again, it is preferred again.
    hi.basic_ack(0, multiple=True)
    pump(hi_conn, lo_conn, seconds=0.1)
    for i in range(2):
        hi.basic_publish("", "q", f"again{i}")
    pump(hi_conn, lo_conn)
    assert [n for n, b in held + got if b.startswith(b"again")] == ["hi", "hi"]


def test_equal_priorities_round_robin(blocking_connect):
    conn = blocking_connect()
    ch = conn.channel()
    ch.queue_declare("q")
    got: list = []
    ch.basic_consume("q", collector(got, "a"), arguments={"x-priority": 3})
    ch.basic_consume("q", collector(got, "b"), arguments={"x-priority": 3})
    ch.basic_consume("q", collector(got, "low"), arguments={"x-priority": 1})
    for i in range(10):
        ch.basic_publish("", "q", str(i))
    pump(conn)
    names = [n for n, _ in got]
    assert "low" not in names
    assert names.count("a") == names.count("b") == 5


def test_x_priority_must_be_an_integer(blocking_connect):
    ch = blocking_connect().channel()
    ch.queue_declare("q")
    with pytest.raises(mqstore.errors.PreconditionFailedError):
        ch.basic_consume("q", lambda *a: None, arguments={"x-priority": "high"})
