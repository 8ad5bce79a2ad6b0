"""The transactional outbox, without the outbox table: publish inside your own transaction.

An mqstore broker is a few ``mq_*`` tables in an SQLite file, so your application's tables can
live in the same file, and a message can be published by the very transaction that makes the
business write. Both commit or both roll back: no dual-write problem, no relay process.

::

    conn = sqlite3.connect("app.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO orders (id, total) VALUES (?, ?)", (42, 99))
    outbox.publish(conn, "", "orders", b'{"id": 42}')
    conn.execute("COMMIT")          # the order and the message, together
    outbox.wake(conn)               # optional: wake waiting consumers at once

:func:`publish` takes a stdlib ``sqlite3.Connection``, a SQLAlchemy ``Connection`` or a
SQLAlchemy ``Session``; it runs the broker's own publish statements (the same routing and
storing code as every other face: ``ChannelState.basic_publish`` and ``store.publish``) on
that connection, inside the transaction that must already be open, and never commits. The
file must already be an mqstore broker at this version (opened once with mqstore, which
creates and migrates the ``mq_*`` tables). See docs/outbox.md.

Consumers in other processes notice the commit by polling (``PRAGMA data_version``, within
~100 ms); :func:`wake` (sqlite3, SQLAlchemy ``Connection``: call it after your commit) and,
for a SQLAlchemy ``Session``, an automatic after-commit hook send the cross-process wake-up
(mqstore.notify) so they look at once.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from . import errors, migrate, notify, sql, store
from .state import ChannelState, ConnectionSettings, drive
from .types import BasicProperties, SystemClock

__all__ = ["OutboxError", "publish", "wake"]

_CLOCK = SystemClock()
_SESSION_HOOK = "mqstore.outbox.wake"


class OutboxError(errors.MqstoreError):
    """The connection cannot take an outbox publish: no open transaction, or the file is not
    an mqstore broker at this version. Nothing was written."""


def _dbapi(conn: Any) -> tuple[sqlite3.Connection, Any]:
    """The sqlite3 connection behind ``conn`` and, for a SQLAlchemy Session, the session."""
    if isinstance(conn, sqlite3.Connection):
        if not conn.in_transaction:
            raise OutboxError(
                "outbox.publish needs an open transaction on the connection (BEGIN, or a "
                "write before it in the same transaction): the message must commit or roll "
                "back with your own writes, so it is never committed on its own"
            )
        return conn, None
    try:
        from sqlalchemy.engine import Connection
        from sqlalchemy.orm import Session
    except ImportError as exc:  # pragma: no cover - SQLAlchemy is a dependency
        raise TypeError(f"unsupported connection {type(conn).__name__}") from exc
    session = None
    if isinstance(conn, Session):
        session = conn
        if not session.in_transaction():
            raise OutboxError(
                "outbox.publish needs an open transaction on the Session (session.begin(), "
                "or any use of it since the last commit)"
            )
        conn = session.connection()
    if not isinstance(conn, Connection):
        raise TypeError(
            "outbox.publish takes a sqlite3.Connection or a SQLAlchemy Connection or Session, "
            f"not {type(conn).__name__}"
        )
    if not conn.in_transaction():
        raise OutboxError(
            "outbox.publish needs an open transaction on the Connection (conn.begin(), or "
            "any statement since the last commit under autobegin)"
        )
    raw = conn.connection.dbapi_connection
    if not isinstance(raw, sqlite3.Connection):
        raise TypeError("outbox.publish needs SQLAlchemy's sqlite (pysqlite) dialect")
    if not raw.in_transaction:
        # SQLAlchemy's transaction is open but pysqlite has not sent BEGIN yet (it does so
        # before the first write only): start it here, taking the write lock at once so the
        # routing read below and the inserts see one snapshot.
        raw.execute("BEGIN IMMEDIATE")
    return raw, session


def publish(
    conn: Any,
    exchange: str,
    routing_key: str,
    body: bytes | str,
    properties: BasicProperties | None = None,
    *,
    mandatory: bool = False,
) -> bool:
    """Publish a message inside the caller's open transaction on ``conn`` (sqlite3
    ``Connection``, SQLAlchemy ``Connection`` or ``Session``); it is stored when the caller
    commits and vanishes if the caller rolls back. Returns True when a queue took it, False
    when it was unroutable (dropped and counted, as a plain publish; with ``mandatory``,
    :class:`~mqstore.errors.UnroutableError` is raised instead).

    Same rules and errors as ``channel.basic_publish`` (404 for a missing exchange, 406 for
    an oversized body, NackError for a full reject-publish queue, deduplication ...). On an
    error nothing of the publish remains in the transaction (it runs behind a SAVEPOINT);
    the caller's own writes are untouched.
    """
    raw, session = _dbapi(conn)
    revision = migrate.current_revision(raw)
    if revision != migrate.HEAD:
        raise OutboxError(
            f"the file is not an mqstore broker at schema {migrate.HEAD!r} (found "
            f"{revision!r}): open it once with mqstore (e.g. mqstore.BlockingConnection) so "
            "it creates or migrates its tables"
        )
    now = _CLOCK.now_ms()
    tx = store.Txn(raw, now, _CLOCK.wall_ms())
    state = ChannelState(0, 0, ConnectionSettings())

    def run(fn: Any, *args: Any, sync: bool = False, **kwargs: Any) -> Any:
        return fn(tx, *args, **kwargs)

    raw.execute("SAVEPOINT mqstore_outbox")
    try:
        returned = drive(
            state.basic_publish(exchange, routing_key, body, properties, mandatory=True), run
        )
    except BaseException:
        raw.execute("ROLLBACK TO mqstore_outbox")
        raw.execute("RELEASE mqstore_outbox")
        raise
    raw.execute("RELEASE mqstore_outbox")
    if session is not None and tx.touched:
        _wake_after_commit(session, _listeners(raw))
    if returned is None:
        return True
    if mandatory:
        raise errors.UnroutableError([returned])
    return False


def _listeners(raw: sqlite3.Connection) -> list[str]:
    return [row[0] for row in raw.execute(sql.SELECT_LISTENERS)]


def _send(names: list[str]) -> None:
    if not names or not notify.supported():
        return
    sender = notify.WakeSender()
    try:
        sender.send(names)
    finally:
        sender.close()


def _wake_after_commit(session: Any, names: list[str]) -> None:
    pending = session.info.get(_SESSION_HOOK)
    if pending is not None:
        pending.update(names)
        return
    from sqlalchemy import event

    pending = set(names)
    session.info[_SESSION_HOOK] = pending

    def after_commit(_session: Any) -> None:
        # After a rollback this fires at the next commit instead: a spurious wake-up,
        # harmless (consumers find nothing new).
        session.info.pop(_SESSION_HOOK, None)
        _send(sorted(pending))

    event.listen(session, "after_commit", after_commit, once=True)


def wake(conn: Any) -> None:
    """After committing outbox publishes, wake consumers waiting in other processes now
    instead of at their next poll (~100 ms). Takes the sqlite3 or SQLAlchemy connection the
    transaction ran on; only reads. Harmless when nobody waits."""
    if not isinstance(conn, sqlite3.Connection):
        # A SQLAlchemy Connection: read through its DBAPI connection, so no SQLAlchemy
        # transaction is begun by this read.
        conn = conn.connection.dbapi_connection
    _send(_listeners(conn))
