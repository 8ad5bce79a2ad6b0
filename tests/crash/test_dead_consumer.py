"""F3 and restart recovery (RELIABILITY.md section 4.2, R3, R5): a consumer SIGKILLed while
holding leases. A live process (upkeep thread, reaping dead sessions) or a new process
(reaping at open) gets the messages again at once, flagged redelivered with delivery count 2,
without waiting for the visibility timeout (set long: 60 s)."""

from __future__ import annotations

import time

import pytest

import mqstore

from .harness import (
    Child,
    History,
    assert_history_ok,
    assert_intact,
    children,
    connect,
    ids,
    now,
    proc_state,
    wait_until,
)

pytestmark = pytest.mark.crash

VISIBILITY_MS = 60_000
QUEUE_ARGS = {"x-visibility-timeout": VISIBILITY_MS}
#: A dead owner's leases must come back well before the visibility timeout: within this.
REDELIVERY_BOUND_S = 2.0


def _publish(crash_db: str, count: int) -> list[str]:
    messages = ids("m", count)
    with connect(crash_db) as conn:
        channel = conn.channel()
        channel.queue_declare("q", durable=True, arguments=QUEUE_ARGS)
        for message_id in messages:
            channel.basic_publish("", "q", message_id.encode())
    return messages


def _take_all(
    channel: mqstore.BlockingChannel, history: History, expected: int
) -> list[tuple[str, bool, int]]:
    """basic_get + ack until ``expected`` messages were taken; (id, redelivered, count)."""
    taken = []
    for _ in range(expected):
        method, _, body = channel.basic_get("q")
        assert method is not None, f"queue empty after {len(taken)} of {expected}"
        delivery = history.delivered(
            body.decode(),
            "parent",
            redelivered=method.redelivered,
            delivery_count=method.delivery_count,
        )
        channel.basic_ack(method.delivery_tag)
        delivery.ack, delivery.t_acked = "ok", now()
        taken.append((body.decode(), method.redelivered, method.delivery_count))
    return taken


@pytest.mark.timeout(30)
@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_killed_consumer_leases_come_back_to_a_live_process_within_2s(
    crash_db: str, reaped: bool
) -> None:
    # Given 10 messages and a child holding leases on the first 3 (visibility 60 s)
    history = History()
    for message_id in _publish(crash_db, 10):
        history.published(message_id)
    with connect(crash_db) as conn, children() as started:
        channel = conn.channel()
        child = Child("lease", crash_db, "--queue", "q", "--count", "3", name="consumer")
        started.append(child)
        child.wait_for("holding")
        leased = [fields["id"] for _, fields in child.events("leased")]
        assert leased == ["m-0", "m-1", "m-2"]
        assert channel.queue_declare("q", passive=True).method.message_count == 7

        # When the child is SIGKILLed (and reaped by its parent, or left a zombie: a dead
        # process whose /proc entry lingers until its parent waits for it)
        killed_at = child.kill(reap=reaped)
        if not reaped:
            wait_until(lambda: proc_state(child.pid) == "Z", timeout=5, what="a zombie")

        # Then this live process sees the 3 messages ready again within 2 s
        wait_until(
            lambda: channel.queue_declare("q", passive=True).method.message_count == 10,
            timeout=10,
            what="the dead consumer's leases to be requeued",
        )
        elapsed = time.monotonic() - killed_at
        state = "reaped" if reaped else "zombie"
        print(f"FIGURE F3 dead consumer ({state}) redelivery: {elapsed * 1000:.0f} ms after kill")
        assert elapsed < REDELIVERY_BOUND_S
        history.record_consumer(child)
        taken = _take_all(channel, history, 10)
        if not reaped:
            child.reap()

    # And they come first, flagged redelivered with delivery count 2; the rest are fresh
    assert taken[:3] == [("m-0", True, 2), ("m-1", True, 2), ("m-2", True, 2)]
    assert all(not redelivered and count == 1 for _, redelivered, count in taken[3:])
    assert_history_ok(history, allow_duplicates=True)
    assert_intact(crash_db)


@pytest.mark.timeout(30)
def test_consumer_killed_between_processing_and_ack__message_redelivered(crash_db: str) -> None:
    # Given one job and a consumer (basic_consume, prefetch 1) that processed it
    history = History()
    history.published("m-0")
    _publish(crash_db, 1)
    with connect(crash_db) as conn, children() as started:
        channel = conn.channel()
        child = Child("process-then-hang", crash_db, "--queue", "q", name="worker")
        started.append(child)
        child.wait_for("processed", nth=1)

        # When it is SIGKILLed after the work, before basic_ack
        killed_at = child.kill()

        # Then the job is delivered again (at-least-once): redelivered, delivery count 2
        wait_until(
            lambda: channel.queue_declare("q", passive=True).method.message_count == 1,
            timeout=10,
            what="the unacked job to be requeued",
        )
        elapsed = time.monotonic() - killed_at
        print(f"FIGURE F3 processed-not-acked redelivery: {elapsed * 1000:.0f} ms after SIGKILL")
        assert elapsed < REDELIVERY_BOUND_S
        history.record_consumer(child)
        taken = _take_all(channel, history, 1)
    assert taken == [("m-0", True, 2)]
    assert_history_ok(history, allow_duplicates=True)
    assert_intact(crash_db)


@pytest.mark.timeout(30)
def test_restart_recovery__new_process_gets_dead_consumers_leases_at_once(crash_db: str) -> None:
    # Given 5 messages, no process but a child holding leases on 3 of them
    history = History()
    for message_id in _publish(crash_db, 5):
        history.published(message_id)
    with children() as started:
        holder = Child("lease", crash_db, "--queue", "q", "--count", "3", name="holder")
        started.append(holder)
        holder.wait_for("holding")

        # When it is SIGKILLed and, later, a new process opens the file
        holder.kill()
        history.record_consumer(holder)
        time.sleep(0.2)  # "later": nothing runs in between to reclaim the leases
        restarted = Child(
            "drain",
            crash_db,
            "--queue",
            "q",
            "--count",
            "5",
            "--give-up-s",
            "10",
            name="restarted",
        )
        started.append(restarted)
        restarted.finish()

    # Then the new process got the 3 leased messages first, redelivered with count 2, right
    # after opening (not after the 60 s visibility timeout), then the 2 fresh ones
    got = restarted.events("got")
    assert [(f["id"], f["redelivered"], f["count"]) for _, f in got] == [
        ("m-0", "1", "2"),
        ("m-1", "1", "2"),
        ("m-2", "1", "2"),
        ("m-3", "0", "1"),
        ("m-4", "0", "1"),
    ]
    first_redelivery_s = float(got[0][1]["elapsed"])
    print(
        f"FIGURE restart recovery: first redelivery {first_redelivery_s * 1000:.0f} ms "
        "after the new process started opening"
    )
    assert first_redelivery_s < REDELIVERY_BOUND_S
    history.record_consumer(restarted)
    assert_history_ok(history, allow_duplicates=True)
    assert_intact(crash_db)
