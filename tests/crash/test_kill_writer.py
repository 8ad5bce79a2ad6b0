"""F1 and F2 (RELIABILITY.md section 4.2): writers SIGKILLed inside a transaction or at
random points of a publish loop. Committed publishes survive, uncommitted rows never appear,
the write lock is free at once and the file stays intact."""

from __future__ import annotations

import random
import time

import pytest

from .harness import (
    Child,
    History,
    assert_history_ok,
    assert_intact,
    children,
    connect,
    drain,
    table_count,
)

pytestmark = pytest.mark.crash


@pytest.mark.timeout(30)
def test_writer_killed_inside_begin_immediate__lock_free_at_once_and_rows_absent(
    crash_db: str,
) -> None:
    # Given a broker file made by mqstore, a live mqstore connection in this process, and a
    # child holding SQLite's write lock (raw sqlite3, BEGIN IMMEDIATE) with 50 rows inserted
    with connect(crash_db) as conn, children() as started:
        channel = conn.channel()
        channel.queue_declare("q", durable=True)
        channel.basic_publish("", "q", b"before")
        child = Child("hold-tx", crash_db, "--queue", "q", "--count", "50")
        started.append(child)
        child.wait_for("in-tx")

        # When the child is SIGKILLed mid-transaction
        child.kill()
        started_at = time.monotonic()
        channel.basic_publish("", "q", b"after")
        publish_s = time.monotonic() - started_at

        # Then the next publish got the lock at once (the busy timeout is 10 s) and only the
        # committed messages are in the queue
        print(f"FIGURE F1 publish after killed lock holder: {publish_s * 1000:.1f} ms")
        assert publish_s < 1.0
        assert channel.queue_declare("q", passive=True).method.message_count == 2
        history = History()
        history.published("before")
        history.published("after")
        drain(channel, "q", history, "parent")
    assert_history_ok(history)
    uncommitted = "SELECT count(*) FROM mq_messages WHERE CAST(body AS TEXT) LIKE 'uncommitted-%'"
    assert table_count(crash_db, uncommitted) == 0
    assert_intact(crash_db)


ROUNDS = 6
MAX_KILL_LINE = 400


@pytest.mark.timeout(60)
@pytest.mark.parametrize("durability", ["full", "normal"])
def test_publisher_killed_at_random_points__every_confirmed_publish_present_once(
    crash_db: str, crash_seed: int, durability: str
) -> None:
    # Given a durable queue
    rng = random.Random(crash_seed)
    with connect(crash_db) as conn:
        conn.channel().queue_declare("q", durable=True)
    history = History()
    kill_points = []

    # When publishers are SIGKILLed after a random line of their try/ok stream, round after
    # round (a kill after a "try" lands inside basic_publish)
    with children() as started:
        for round_number in range(ROUNDS):
            kill_line = rng.randint(1, MAX_KILL_LINE)
            kill_points.append(kill_line)
            child = Child(
                "publish",
                crash_db,
                "--queue",
                "q",
                "--prefix",
                f"r{round_number}",
                "--durability",
                durability,
                name=f"publisher-{round_number}",
            )
            started.append(child)
            child.wait_lines(kill_line)
            child.kill()
            history.record_publisher(child)

    # Then every id printed after basic_publish returned is in the queue exactly once, and
    # nothing else is (ids in flight at the kill may or may not be)
    with connect(crash_db) as conn:
        drain(conn.channel(), "q", history, "drainer")
    verdict = assert_history_ok(history, seed=crash_seed)
    print(
        f"FIGURE F2 durability={durability}: kill lines {kill_points}, "
        f"{verdict.published_ok} confirmed, {len(verdict.recovered)} in flight and present, "
        "0 lost"
    )
    assert verdict.published_ok > 0
    assert_intact(crash_db)
