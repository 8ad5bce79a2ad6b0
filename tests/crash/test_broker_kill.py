"""Issue 5, "Must show": a dead-lettered message and a delayed message both survive a SIGKILL
of the broker process.

Scenario (the same through the AMQP server and through the embedded API): queue ``work``
dead-letters to ``dead`` (default exchange, routing key ``dead``); one message published to
``work`` is taken and nacked without requeue, so it moves to ``dead`` with an ``x-death``
header; one message is published to ``later`` with ``x-delay: 1500`` (ms). Both publishes
have returned (confirmed) when the process holding the file is SIGKILLed. Afterwards, from a
restarted server or a fresh process on the same file:

- ``dead`` holds exactly that one message, ``x-death`` reason ``rejected``; ``work`` is empty;
- the delayed message is not deliverable before its due time (checked only when the first
  basic_get after the restart returned less than 1.5 s after the publish started), and is
  delivered exactly once after it;
- ``PRAGMA integrity_check`` is ok once nothing has the file open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.amqp.conftest import start_server

from .harness import MARKER_TIMEOUT_S, REPO_ROOT, assert_intact, connect, now

pytestmark = pytest.mark.crash

DELAY_MS = 1500
DUE_S = DELAY_MS / 1000
#: Safety bound for the delayed message to show up after its due time (fails the test).
FIRE_DEADLINE_S = 15.0
#: Wall clock (the stored due time) against a monotonic clock: slewing is at most 500 ppm.
CLOCK_SLACK_S = 0.005
DLX_ARGS = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}


def message_count(channel: Any, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def check_after_restart(channel: Any, t_delay_published: float, clock: Callable[[], float]) -> str:
    """The post-restart checks, on a pika or an mqstore blocking channel. ``t_delay_published``
    is ``clock()`` taken just BEFORE the delayed publish was sent, so ``clock() - it`` is an
    upper bound on the time since the broker stored it. Returns a FIGURE line."""
    # The delayed message first, while it may still be early.
    method, _, _ = channel.basic_get("later")
    early_s = clock() - t_delay_published
    checked_early = early_s < DUE_S - CLOCK_SLACK_S
    if checked_early:
        assert method is None, f"delayed message delivered {early_s:.3f} s after its publish"
    elif method is not None:
        channel.basic_nack(method.delivery_tag, requeue=True)

    # The dead-lettered message: exactly one, in `dead`, with its x-death history.
    assert message_count(channel, "work") == 0
    assert message_count(channel, "dead") == 1
    method, props, body = channel.basic_get("dead")
    assert body == b"to-dead"
    deaths = props.headers["x-death"]
    assert len(deaths) == 1, deaths
    assert deaths[0]["reason"] == "rejected"
    assert deaths[0]["queue"] == "work"
    assert deaths[0]["count"] == 1
    assert props.headers["x-first-death-reason"] == "rejected"
    channel.basic_ack(method.delivery_tag)
    assert channel.basic_get("dead")[0] is None
    assert channel.basic_get("work")[0] is None

    # The delayed message fires: polled with a bounded deadline, as a client would.
    deadline = clock() + DUE_S + FIRE_DEADLINE_S
    while True:
        method, props, body = channel.basic_get("later")
        if method is not None:
            fired_s = clock() - t_delay_published
            break
        assert clock() < deadline, "the delayed message never became deliverable"
        time.sleep(0.02)
    assert body == b"delayed"
    assert fired_s >= DUE_S - CLOCK_SLACK_S, f"delivered {fired_s:.3f} s after its publish"
    channel.basic_ack(method.delivery_tag)
    # Exactly once: nothing left, nothing comes back.
    time.sleep(0.2)
    assert channel.basic_get("later")[0] is None
    assert message_count(channel, "later") == 0
    return (
        f"early get at {early_s:.3f} s ({'checked' if checked_early else 'too late to check'}), "
        f"delayed message fired at {fired_s:.3f} s after its publish (due {DUE_S} s)"
    )


# --- through the AMQP server ------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_server_sigkill_keeps_dead_lettered_and_delayed_messages(tmp_path: Path) -> None:
    import pika

    srv = start_server(tmp_path)
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=srv.port))
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare("dead", durable=True)
        channel.queue_declare("later", durable=True)
        channel.queue_declare("work", durable=True, arguments=DLX_ARGS)
        channel.basic_publish("", "work", b"to-dead")  # confirmed (raises on a nack)
        method, _, body = channel.basic_get("work")
        assert body == b"to-dead"
        channel.basic_nack(method.delivery_tag, requeue=False)
        # A nack has no reply; the passive declare is a round trip behind it on the channel.
        assert message_count(channel, "dead") == 1
        t_delay_published = time.monotonic()
        channel.basic_publish(
            "", "later", b"delayed", pika.BasicProperties(headers={"x-delay": DELAY_MS})
        )
        srv.stop(signal.SIGKILL)
        killed_after_s = time.monotonic() - t_delay_published
        assert srv.proc.returncode == -signal.SIGKILL
        try:
            conn.close()
        except pika.exceptions.AMQPError:
            pass  # the socket is gone with the server
    finally:
        srv.stop(signal.SIGKILL)

    srv2 = start_server(tmp_path)  # same broker.db, new port
    try:
        restarted_after_s = time.monotonic() - t_delay_published
        params = pika.ConnectionParameters(host="127.0.0.1", port=srv2.port)
        with pika.BlockingConnection(params) as conn:
            figure = check_after_restart(conn.channel(), t_delay_published, time.monotonic)
    finally:
        code = srv2.stop()
    print(
        f"FIGURE broker-kill server: killed {killed_after_s:.3f} s and listening again "
        f"{restarted_after_s:.3f} s after the delayed publish; {figure}"
    )
    assert code == 0, f"server exited {code}:\n{srv2.log()[-3000:]}"
    log = srv2.log()
    for sign in ("connection_bug", "level=error", "Traceback"):
        assert sign not in log, log[-5000:]
    assert_intact(srv2.db)


# --- through the embedded API -----------------------------------------------------------------

# The child runs the scenario, prints `published` once both publishes returned (committed),
# then blocks holding its connection until it is killed. `t=` is CLOCK_BOOTTIME before the
# delayed publish (one clock for every process on the host: harness.now()).
CHILD = r"""
import sys, threading, time, mqstore
clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=sys.argv[1]))
ch = conn.channel()
ch.confirm_delivery()
ch.queue_declare("dead", durable=True)
ch.queue_declare("later", durable=True)
ch.queue_declare("work", durable=True, arguments={
    "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"})
ch.basic_publish("", "work", b"to-dead")
method, _, body = ch.basic_get("work")
assert body == b"to-dead", body
ch.basic_nack(method.delivery_tag, requeue=False)
t = time.clock_gettime(clock)
ch.basic_publish("", "later", b"delayed", mqstore.BasicProperties(headers={"x-delay": 1500}))
print(f"published t={t!r}", flush=True)
threading.Event().wait()
"""


@pytest.mark.timeout(90)
def test_embedded_sigkill_keeps_dead_lettered_and_delayed_messages(crash_db: str) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, crash_db],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the kill trigger is this marker, never a timer
        if not line.startswith("published "):
            child.kill()
            _, err = child.communicate(timeout=MARKER_TIMEOUT_S)
            raise AssertionError(f"child did not publish: {line!r}\n{err}")
        t_delay_published = float(line.split("t=", 1)[1])
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=MARKER_TIMEOUT_S) == -signal.SIGKILL
        killed_after_s = now() - t_delay_published
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=MARKER_TIMEOUT_S)  # reaps it and closes its pipes

    with connect(crash_db) as conn:
        figure = check_after_restart(conn.channel(), t_delay_published, now)
    print(f"FIGURE broker-kill embedded: killed {killed_after_s:.3f} s after the publish; {figure}")
    assert_intact(crash_db)
