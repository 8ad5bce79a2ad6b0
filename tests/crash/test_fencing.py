"""F4 (RELIABILITY.md section 4.2, R4): a consumer frozen with SIGSTOP past its visibility
timeout loses its lease; another consumer gets the message; the frozen one, continued, is
refused with LeaseLostError and changes nothing. Plus the other half of R3/R5: a *live*
consumer keeps its lease however short the visibility timeout, because its process renews it.
"""

from __future__ import annotations

import time

import pytest

from .harness import (
    Child,
    History,
    assert_history_ok,
    assert_intact,
    children,
    connect,
    now,
    proc_state,
    table_count,
    wait_until,
)

pytestmark = pytest.mark.crash

VISIBILITY_MS = 500


@pytest.mark.timeout(30)
@pytest.mark.parametrize("operation", ["ack", "nack", "reject"])
def test_stopped_consumer_past_its_lease__late_settle_refused_and_new_holder_unharmed(
    crash_db: str, operation: str
) -> None:
    # Given a queue with a 500 ms visibility timeout and one message, leased by child A
    history = History()
    history.published("f-1")
    with connect(crash_db) as conn, children() as started:
        channel = conn.channel()
        channel.queue_declare("fq", durable=True, arguments={"x-visibility-timeout": VISIBILITY_MS})
        channel.basic_publish("", "fq", b"f-1")
        holder = Child("fence", crash_db, "--queue", "fq", name="A")
        started.append(holder)
        leased = holder.wait_for("leased")
        assert (leased["id"], leased["count"]) == ("f-1", "1")

        # When A is frozen (SIGSTOP) and this process (B) polls until it gets the message
        holder.stop()
        wait_until(lambda: proc_state(holder.pid) == "T", timeout=5, what="A to stop")
        stopped_at = time.monotonic()
        method = None

        def b_got_it() -> bool:
            nonlocal method
            method, _, _ = channel.basic_get("fq")
            return method is not None

        wait_until(b_got_it, timeout=10, what="B to get the message")
        assert method is not None
        print(
            f"FIGURE F4 B got the message {1000 * (time.monotonic() - stopped_at):.0f} ms "
            f"after SIGSTOP of A (visibility timeout {VISIBILITY_MS} ms)"
        )
        b_delivery = history.delivered(
            "f-1", "B", redelivered=method.redelivered, delivery_count=method.delivery_count
        )
        assert (method.redelivered, method.delivery_count) == (True, 2)

        # And A is continued and tries to ack (or nack, or reject) its stale delivery
        holder.cont()
        holder.send(operation)
        refused = holder.wait_for("lease-lost")
        holder.wait_for("closed")
        holder.finish()

        # Then A was refused with 406 and B's ack, after it, succeeds: A changed nothing
        assert refused["code"] == "406"
        history.record_consumer(holder)
        channel.basic_ack(method.delivery_tag)
        b_delivery.ack, b_delivery.t_acked = "ok", now()
        assert channel.basic_get("fq") == (None, None, None)
        assert channel.queue_declare("fq", passive=True).method.message_count == 0

    # And the message is gone exactly once: no entry, no message row left behind
    assert_history_ok(history, allow_duplicates=True)
    assert table_count(crash_db, "SELECT count(*) FROM mq_entries") == 0
    assert table_count(crash_db, "SELECT count(*) FROM mq_messages") == 0
    assert_intact(crash_db)


@pytest.mark.timeout(30)
def test_live_consumer_keeps_its_lease_past_a_short_visibility_timeout(crash_db: str) -> None:
    # Given a live process holding a lease on a queue with a 500 ms visibility timeout, and
    # another process polling the queue the whole time
    with connect(crash_db) as conn, children() as started:
        channel = conn.channel()
        channel.queue_declare("fq", durable=True, arguments={"x-visibility-timeout": VISIBILITY_MS})
        channel.basic_publish("", "fq", b"f-1")
        method, _, _ = channel.basic_get("fq")
        assert method is not None
        poller = Child(
            "drain", crash_db, "--queue", "fq", "--count", "1", "--give-up-s", "3", name="poller"
        )
        started.append(poller)

        # When it works on the message for 3 s (six visibility timeouts), alive throughout
        poller.wait_for("done", timeout=20)

        # Then nobody else got the message and its ack succeeds
        assert poller.events("got") == []
        channel.basic_ack(method.delivery_tag)
        poller.finish()
        assert channel.queue_declare("fq", passive=True).method.message_count == 0
    assert_intact(crash_db)
