"""The transactional outbox (mqstore.outbox): a publish inside the application's own SQLite
transaction, through sqlite3 and SQLAlchemy, commits or rolls back with the business write."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import mqstore
from mqstore import BasicProperties, errors, outbox


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]


@pytest.fixture
def broker(blocking_connect) -> Any:
    """The file is made an mqstore broker (tables created) and has a queue ``orders``."""
    connection = blocking_connect()
    channel = connection.channel()
    channel.queue_declare("orders", durable=True)
    return channel


@pytest.fixture
def app_conn(db_path: str, broker: Any):
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total INTEGER)")
    yield conn
    conn.close()


def queued(channel: Any) -> list[bytes]:
    out = []
    while True:
        method, _, body = channel.basic_get("orders", auto_ack=True)
        if method is None:
            return out
        out.append(body)


def visible(db_path: str) -> int:
    """Messages other connections can see (a read: no write lock needed)."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT count(*) FROM mq_entries").fetchone()[0]
    finally:
        conn.close()


def rows(db_path: str) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    finally:
        conn.close()


# --- sqlite3 ------------------------------------------------------------------------------


def test_sqlite3_commit_stores_both(app_conn, broker, db_path) -> None:
    app_conn.execute("BEGIN IMMEDIATE")
    app_conn.execute("INSERT INTO orders VALUES (1, 10)")
    assert outbox.publish(app_conn, "", "orders", b"order 1", BasicProperties(message_id="1"))
    assert visible(db_path) == 0  # not visible to other connections before the commit
    app_conn.execute("COMMIT")
    outbox.wake(app_conn)
    assert rows(db_path) == 1
    assert queued(broker) == [b"order 1"]


def test_sqlite3_rollback_drops_both(app_conn, broker, db_path) -> None:
    app_conn.execute("BEGIN")
    app_conn.execute("INSERT INTO orders VALUES (2, 20)")
    outbox.publish(app_conn, "", "orders", b"order 2")
    app_conn.execute("ROLLBACK")
    assert rows(db_path) == 0
    assert queued(broker) == []


def test_sqlite3_legacy_transaction_context(db_path, broker) -> None:
    """Python's default (implicit BEGIN before a write) and ``with conn:``."""
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total INTEGER)")
        conn.commit()
        with conn:
            conn.execute("INSERT INTO orders VALUES (3, 30)")
            outbox.publish(conn, "", "orders", b"order 3")
        with pytest.raises(ZeroDivisionError):
            with conn:
                conn.execute("INSERT INTO orders VALUES (4, 40)")
                outbox.publish(conn, "", "orders", b"order 4")
                raise ZeroDivisionError
    finally:
        conn.close()
    assert rows(db_path) == 1
    assert queued(broker) == [b"order 3"]


def test_sqlite3_without_transaction_is_refused(app_conn, broker) -> None:
    with pytest.raises(outbox.OutboxError, match="open transaction"):
        outbox.publish(app_conn, "", "orders", b"x")
    assert queued(broker) == []


def test_not_a_broker_file_is_refused(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "plain.db", isolation_level=None)
    try:
        conn.execute("BEGIN")
        with pytest.raises(outbox.OutboxError, match="not an mqstore broker"):
            outbox.publish(conn, "", "orders", b"x")
    finally:
        conn.close()


def test_errors_leave_the_callers_transaction_usable(app_conn, broker, db_path) -> None:
    app_conn.execute("BEGIN")
    app_conn.execute("INSERT INTO orders VALUES (5, 50)")
    with pytest.raises(errors.NotFoundError):
        outbox.publish(app_conn, "missing-exchange", "k", b"x")
    with pytest.raises(errors.UnroutableError):
        outbox.publish(app_conn, "", "no-such-queue", b"x", mandatory=True)
    assert outbox.publish(app_conn, "", "no-such-queue", b"x") is False
    outbox.publish(app_conn, "", "orders", b"order 5")
    app_conn.execute("COMMIT")
    assert rows(db_path) == 1
    assert queued(broker) == [b"order 5"]


def test_routing_through_exchanges_and_features(app_conn, broker) -> None:
    broker.exchange_declare("events", "topic")
    broker.queue_bind("orders", "events", "order.*")
    broker.queue_declare("dedup", arguments={"x-deduplication-window": 60})
    app_conn.execute("BEGIN")
    outbox.publish(app_conn, "events", "order.created", b"via topic")
    outbox.publish(app_conn, "", "dedup", b"once", BasicProperties(message_id="m"))
    outbox.publish(app_conn, "", "dedup", b"twice", BasicProperties(message_id="m"))
    app_conn.execute("COMMIT")
    assert queued(broker) == [b"via topic"]
    assert broker.queue_declare("dedup", passive=True).method.message_count == 1


def test_waiting_consumer_wakes_after_commit(app_conn, blocking_connect) -> None:
    consumer = blocking_connect().channel()
    got: list[float] = []

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        got.append(time.monotonic())
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    consumer.basic_consume("orders", on_message)
    consumer.connection.process_data_events(0.05)
    app_conn.execute("BEGIN")
    outbox.publish(app_conn, "", "orders", b"wake up")
    app_conn.execute("COMMIT")
    committed = time.monotonic()
    consumer.connection.process_data_events(5)
    assert got and got[0] - committed < 1.0


# --- SQLAlchemy ---------------------------------------------------------------------------


@pytest.fixture
def sa_engine(db_path: str, broker: Any):
    engine = sa.create_engine(f"sqlite:///{db_path}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_sqlalchemy_session_commit_and_rollback(sa_engine, broker, db_path) -> None:
    with Session(sa_engine) as session:
        session.add(Order(id=10, total=100))
        outbox.publish(session, "", "orders", b"order 10")
        session.commit()
    with Session(sa_engine) as session:
        session.add(Order(id=11, total=110))
        outbox.publish(session, "", "orders", b"order 11")
        session.rollback()
    with pytest.raises(ValueError):
        with Session(sa_engine) as session, session.begin():
            session.add(Order(id=12, total=120))
            outbox.publish(session, "", "orders", b"order 12")
            raise ValueError("business rule failed")
    assert rows(db_path) == 1
    assert queued(broker) == [b"order 10"]


def test_sqlalchemy_connection_commit_and_rollback(sa_engine, broker, db_path) -> None:
    with sa_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO orders VALUES (20, 200)"))
        outbox.publish(conn, "", "orders", b"order 20")
    with sa_engine.connect() as conn:
        conn.execute(sa.text("INSERT INTO orders VALUES (21, 210)"))
        outbox.publish(conn, "", "orders", b"order 21")
        conn.rollback()
        outbox.wake(conn)
    assert rows(db_path) == 1
    assert queued(broker) == [b"order 20"]


def test_sqlalchemy_session_publish_first_then_write(sa_engine, broker, db_path) -> None:
    """The publish may come before any write: the DBAPI transaction is begun for it."""
    with Session(sa_engine) as session:
        session.begin()
        outbox.publish(session, "", "orders", b"first")
        session.add(Order(id=30, total=300))
        session.commit()
    assert rows(db_path) == 1
    assert queued(broker) == [b"first"]


async def test_aio_consumer_sees_outbox_messages(db_path, app_conn) -> None:
    connection = await mqstore.aio.connect(db_path)
    try:
        ch = await connection.channel()
        app_conn.execute("BEGIN")
        outbox.publish(app_conn, "", "orders", b"async")
        app_conn.execute("COMMIT")
        _, _, body = await ch.basic_get("orders", auto_ack=True)
        assert body == b"async"
    finally:
        await connection.close()
