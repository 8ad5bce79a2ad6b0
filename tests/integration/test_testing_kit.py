"""The testing kit (mqstore.testing) and its pytest plugin, each helper proven on a real file:
fixtures, ManualClock, advance/tick, simulate_crash + recover, and the inspection helpers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mqstore
from mqstore import testing
from mqstore.testing import Broker, ManualClock, advance, simulate_crash


def _queue_with(broker: Broker, *bodies: bytes, vt_ms: int = 1000) -> mqstore.BlockingChannel:
    channel = broker.connect(client_name="producer").channel()
    channel.queue_declare("jobs", arguments={"x-visibility-timeout": vt_ms})
    for body in bodies:
        channel.basic_publish("", "jobs", body)
    return channel


# --- the plugin ---------------------------------------------------------------------------------


def test_plugin_fixtures_give_a_fresh_broker_on_the_manual_clock(
    mqstore_broker: Broker, mqstore_clock: ManualClock, tmp_path: Path
) -> None:
    assert mqstore_broker.clock is mqstore_clock
    assert Path(mqstore_broker.path).parent == tmp_path
    assert not os.path.exists(mqstore_broker.path)
    assert mqstore_broker.queues() == []  # no file yet: nothing, and no file created
    assert not os.path.exists(mqstore_broker.path)
    connection = mqstore_broker.connect()
    assert connection.params.clock is mqstore_clock
    assert connection._engine.clock is mqstore_clock


def test_plugin_is_registered_and_its_module_imports_nothing_heavy() -> None:
    # The entry point pytest loads at every startup
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("mqstore") == "mqstore.testing"
    # Importing the kit pulls in neither SQLAlchemy/alembic (migrations) nor the AMQP server
    probe = textwrap.dedent(
        """
        import sys
        import mqstore.testing
        heavy = [m for m in sys.modules
                 if m.split('.')[0] in ('sqlalchemy', 'alembic', 'pamqp')
                 or m.startswith('mqstore.amqp')]
        print(heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fixtures_close_the_connections_they_opened(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "b.db", clock=ManualClock())
    first, second = broker.connect(), broker.connect()
    second.close()
    broker.close()
    assert first.is_closed and second.is_closed
    assert broker.sessions() == []


# --- ManualClock and advance ----------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(now_ms=5, wall_ms=100)
    assert (clock.now_ms(), clock.wall_ms()) == (5, 100)
    advance(clock, 20)
    assert (clock.now_ms(), clock.wall_ms()) == (25, 120)
    clock.jump_wall(-3_600_000)
    assert (clock.now_ms(), clock.wall_ms()) == (25, 120 - 3_600_000)
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)


def test_advance_with_tick_expires_a_lease_without_sleeping(mqstore_broker: Broker) -> None:
    # Given a message leased by a connection that then stops renewing (it crashed)
    holder = mqstore_broker.connect()
    _queue_with(mqstore_broker, b"m", vt_ms=1000)
    method, _, _ = holder.channel().basic_get("jobs")
    assert method is not None
    simulate_crash(holder)

    # When 999 ms pass, the lease holds; at 1000 ms, upkeep makes the message ready
    mqstore_broker.advance(999)
    assert mqstore_broker.messages("jobs")[0].state == "leased"
    advance(mqstore_broker.clock, 1, broker=mqstore_broker)

    # Then it is ready again, its next delivery flagged redelivered
    [message] = mqstore_broker.messages("jobs")
    assert (message.state, message.redelivered, message.delivery_count) == ("ready", True, 1)


def test_tick_renews_live_connections_leases(mqstore_broker: Broker) -> None:
    # Given a live connection holding a 1000 ms lease
    holder = mqstore_broker.connect().channel()
    _queue_with(mqstore_broker, b"m", vt_ms=1000)
    method, _, _ = holder.basic_get("jobs")

    # When 5 s pass in steps shorter than the lease, with upkeep between them
    for _ in range(10):
        mqstore_broker.advance(500)

    # Then it still holds the message, and its ack works
    [message] = mqstore_broker.messages("jobs")
    assert message.state == "leased"
    assert message.lease_expires_at_ms == mqstore_broker.clock.now_ms() + 1000
    holder.basic_ack(method.delivery_tag)
    assert mqstore_broker.messages("jobs") == []


def test_advance_needs_a_manual_clock(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ManualClock"):
        Broker(tmp_path / "b.db").advance(1)


# --- simulate_crash and recover ---------------------------------------------------------------


def test_simulated_crash_leaves_leases_consumers_and_exclusive_queues_in_place(
    mqstore_broker: Broker,
) -> None:
    # Given a connection holding a lease, a consumer and an exclusive queue
    producer = _queue_with(mqstore_broker, b"a", b"b")
    victim = mqstore_broker.connect(client_name="victim")
    channel = victim.channel()
    channel.queue_declare("mine", exclusive=True)
    method, _, _ = channel.basic_get("jobs")
    channel.basic_consume("jobs", lambda *args: None)
    session = victim._session

    # When it crashes
    simulate_crash(victim)

    # Then the file still holds all of it, owned by the dead connection's session
    leased, ready = mqstore_broker.messages("jobs")
    assert (leased.body, leased.state, leased.lease_owner) == (b"a", "leased", session)
    assert (leased.owner_pid, leased.owner_name) == (os.getpid(), "victim")
    assert ready.state == "ready"
    assert mqstore_broker.queue("jobs").consumers == 1
    assert mqstore_broker.queue("mine").exclusive
    assert any(s.id == session and s.leases == 1 for s in mqstore_broker.sessions())
    # And upkeep does not reclaim it: its process (this one) is alive
    mqstore_broker.tick()
    assert mqstore_broker.messages("jobs")[0].state == "leased"
    # And the crashed connection is unusable, its close a no-op
    assert victim.is_closed
    with pytest.raises(mqstore.ChannelWrongStateError):
        channel.basic_ack(method.delivery_tag)
    with pytest.raises(mqstore.ConnectionWrongStateError):
        victim.channel()
    victim.close()
    assert mqstore_broker.messages("jobs")[0].state == "leased"
    # (the survivor is unaffected)
    producer.basic_publish("", "jobs", b"c")
    assert mqstore_broker.queue("jobs").ready == 2


def test_recover_reclaims_the_crashed_session_as_a_restarted_process_would(
    mqstore_broker: Broker,
) -> None:
    # Given a crashed connection that held a lease, a consumer and an exclusive queue, and a
    # live one holding a lease too
    _queue_with(mqstore_broker, b"a", b"b")
    live = mqstore_broker.connect().channel()
    live_method, _, _ = live.basic_get("jobs")
    victim = mqstore_broker.connect()
    channel = victim.channel()
    channel.queue_declare("mine", exclusive=True)
    channel.basic_get("jobs")
    channel.basic_consume("jobs", lambda *args: None)
    session = victim._session
    simulate_crash(victim)

    # When recovery runs
    assert mqstore_broker.recover() == [session]

    # Then the crashed session is gone with its consumer and exclusive queue; its message
    # is ready and flagged redelivered; the live connection's lease is untouched
    assert session not in [s.id for s in mqstore_broker.sessions()]
    assert [q.name for q in mqstore_broker.queues()] == ["jobs"]
    assert mqstore_broker.queue("jobs").consumers == 0
    held, freed = mqstore_broker.messages("jobs")
    assert (held.body, held.state) == (b"a", "leased")
    assert (freed.body, freed.state, freed.redelivered) == (b"b", "ready", True)
    method, _, body = live.basic_get("jobs")
    assert (body, method.redelivered, method.delivery_count) == (b"b", True, 2)
    live.basic_ack(live_method.delivery_tag)
    assert mqstore_broker.recover() == []


async def test_simulated_crash_of_an_asyncio_connection(mqstore_broker: Broker) -> None:
    # Given an asyncio consumer that received a message and did not ack it
    _queue_with(mqstore_broker, b"a")
    connection = await mqstore_broker.aio_connect()
    channel = await connection.channel()
    iterator = channel.consume("jobs")
    delivery = await anext(iterator)
    assert delivery.body == b"a"

    # When it crashes: the iterator ends, the lease and consumer stay in the file
    simulate_crash(connection)
    assert [d async for d in iterator] == []
    [message] = mqstore_broker.messages("jobs")
    assert message.state == "leased"
    assert mqstore_broker.queue("jobs").consumers == 1
    await connection.close()  # a no-op

    # Then recovery frees it
    assert len(mqstore_broker.recover()) == 1
    assert mqstore_broker.messages("jobs")[0].state == "ready"
    assert mqstore_broker.queue("jobs").consumers == 0


def test_simulate_crash_refuses_a_closed_connection_and_other_objects(
    mqstore_broker: Broker,
) -> None:
    connection = mqstore_broker.connect()
    connection.close()
    with pytest.raises(mqstore.ConnectionWrongStateError):
        simulate_crash(connection)
    with pytest.raises(TypeError):
        simulate_crash(object())


def test_recover_in_another_process_reclaims_via_the_normal_reaper(
    mqstore_broker: Broker,
) -> None:
    # The mark written by recover() is what any process's reaper acts on: mark the row only
    # (no reap here) and let a separate process open the file.
    _queue_with(mqstore_broker, b"a")
    victim = mqstore_broker.connect()
    victim.channel().basic_get("jobs")
    session = victim._session
    simulate_crash(victim)
    mqstore_broker.close()  # no connection of this process stays open
    raw = sqlite3.connect(mqstore_broker.path, isolation_level=None)
    raw.execute("UPDATE mq_sessions SET process_start = ? WHERE id = ?", (testing.CRASHED, session))
    raw.close()
    probe = textwrap.dedent(
        f"""
        import mqstore
        with mqstore.BlockingConnection(mqstore.ConnectionParameters(path={mqstore_broker.path!r})):
            pass
        """
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
    assert mqstore_broker.sessions() == []
    assert mqstore_broker.messages("jobs")[0].state == "ready"


# --- inspection -----------------------------------------------------------------------------------


def test_queues_lists_counts_and_flags(mqstore_broker: Broker) -> None:
    channel = _queue_with(mqstore_broker, b"a", b"b", b"c")
    channel.queue_declare("durable-one", durable=True, auto_delete=True)
    channel.basic_get("jobs")
    channel.basic_consume("durable-one", lambda *args: None)

    assert mqstore_broker.queues() == [
        testing.QueueInfo("durable-one", 0, 0, 1, True, False, True),
        testing.QueueInfo("jobs", 2, 1, 0, False, False, False),
    ]
    with pytest.raises(KeyError):
        mqstore_broker.queue("missing")


def test_messages_show_state_owner_delivery_count_and_redelivered(
    mqstore_broker: Broker,
) -> None:
    # Given three messages: one leased twice (redelivered), one leased once, one ready
    channel = _queue_with(mqstore_broker, b"a", b"b", b"c")
    first, _, _ = channel.basic_get("jobs")
    channel.basic_nack(first.delivery_tag, requeue=True)
    channel.basic_get("jobs")
    channel.basic_get("jobs")

    a, b, c = mqstore_broker.messages("jobs")

    session = channel.connection._session
    assert (a.body, a.state, a.delivery_count, a.redelivered) == (b"a", "leased", 2, True)
    assert (b.body, b.state, b.delivery_count, b.redelivered) == (b"b", "leased", 1, False)
    assert (c.body, c.state, c.delivery_count, c.redelivered) == (b"c", "ready", 0, False)
    assert a.lease_owner == b.lease_owner == session
    assert (a.owner_pid, a.owner_name) == (os.getpid(), "producer")
    assert a.lease_expires_at_ms == mqstore_broker.clock.now_ms() + 1000
    assert (c.lease_owner, c.owner_pid, c.lease_expires_at_ms) == (None, None, None)
    assert (a.exchange, a.routing_key) == ("", "jobs")
    with pytest.raises(KeyError):
        mqstore_broker.messages("missing")
    channel.queue_declare("empty")
    assert mqstore_broker.messages("empty") == []


def test_counters_count_unroutable_messages(mqstore_broker: Broker) -> None:
    channel = mqstore_broker.connect().channel()
    assert mqstore_broker.counters() == {}
    channel.basic_publish("", "nowhere", b"x")
    channel.basic_publish("", "nowhere", b"y")
    assert mqstore_broker.counters() == {"unroutable": 2}


def test_inspection_never_creates_the_file(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "absent.db")
    assert (broker.queues(), broker.sessions(), broker.counters()) == ([], [], {})
    assert not (tmp_path / "absent.db").exists()
