"""The hot statements use the indexes their comments name (EXPLAIN QUERY PLAN on a file built
from schema.metadata), so queue depth does not turn publish, lease or ack into scans."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from mqstore import schema, sql


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    path = Path(tmp_path_factory.mktemp("plans")) / "plans.db"
    engine = create_engine(f"sqlite:///{path}")
    schema.metadata.create_all(engine)
    engine.dispose()
    connection = sqlite3.connect(path)
    yield connection
    connection.close()


def plan(conn: sqlite3.Connection, statement: str, params: tuple) -> str:
    rows = conn.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
    return "\n".join(row[-1] for row in rows)


@pytest.mark.parametrize(
    ("statement", "params", "expected"),
    [
        (sql.SELECT_READY, (1, 0, 10), "ix_mq_entries_ready"),
        (sql.COUNT_READY, (1,), "ix_mq_entries_ready"),
        (sql.ACK_ENTRY, (1, 2), "INTEGER PRIMARY KEY"),
        (sql.REQUEUE_ENTRY, (1, 2), "INTEGER PRIMARY KEY"),
        (sql.REQUEUE_EXPIRED, (1,), "ix_mq_entries_lease_expiry"),
        (sql.REQUEUE_OWNER, (1,), "ix_mq_entries_lease_owner"),
        (sql.ROUTE_DIRECT, ("x", "k"), "sqlite_autoindex_mq_bindings_1"),
        (sql.ROUTE_ALL, ("x",), "sqlite_autoindex_mq_bindings_1"),
        (sql.ROUTE_DEFAULT, ("q",), "sqlite_autoindex_mq_queues"),
        (sql.PUBLISH_DEFAULT_PLAIN, ("q", 0, None, b"x", 0, None), "sqlite_autoindex_mq_queues"),
        (sql.ROUTE_EXCHANGES, ("x",), "sqlite_autoindex_mq_exchange_bindings_1"),
        (sql.LEASE_ENTRIES, (1, 1, 0, 0, "[1]"), "INTEGER PRIMARY KEY"),
        (sql.DELETE_ENTRIES, ("[1]",), "INTEGER PRIMARY KEY"),
        (sql.ACK_ENTRIES, ("[[1, 2]]",), "INTEGER PRIMARY KEY"),
        # Queue features (docs/queue-features.md).
        (sql.INSERT_ENTRY_INLINE, (1, 1, 0, 5, None, None, "", "q", None, b"x", 0, None), ""),
        (sql.INSERT_ENTRY_SHARED, (1, 1, 0, 5, None, None, 7), ""),
        (sql.SELECT_EXPIRED, (1, 10), "ix_mq_entries_expiry"),
        (sql.SELECT_EXPIRED_QUEUES, (1, 10), "ix_mq_queues_expiry"),
        (sql.TOUCH_QUEUE, (1, 1), "INTEGER PRIMARY KEY"),
        (sql.PARK_QUEUE_EXPIRY, (1,), "INTEGER PRIMARY KEY"),
        (sql.SELECT_READY_COUNTS, (1,), "INTEGER PRIMARY KEY"),
        (sql.SELECT_HEAD, (1, 10), "ix_mq_entries_ready"),
        (sql.SELECT_ENTRY_MESSAGE, (1,), "INTEGER PRIMARY KEY"),
        (sql.REJECT_ENTRY, (1, 2), "INTEGER PRIMARY KEY"),
        (sql.SELECT_LEASED_QUEUE, (1, 2), "INTEGER PRIMARY KEY"),
        (sql.SELECT_QUEUE_BY_ID, (1,), "INTEGER PRIMARY KEY"),
        # Delayed delivery, single active consumer, consumer priorities.
        (sql.PROMOTE_DUE, (1, 10), "ix_mq_entries_scheduled"),
        (sql.NEXT_DUE, (), "ix_mq_entries_scheduled"),
        (sql.SELECT_ACTIVE_CONSUMER, (1,), "ix_mq_consumers_queue_id"),
        (sql.HIGHER_PRIORITY_CONSUMER, (1, 0), "ix_mq_consumers_queue_id"),
        (sql.ANY_LEASE_EXPIRED, (1,), "ix_mq_entries_lease_expiry"),
        (sql.ANY_DUE, (1,), "ix_mq_entries_scheduled"),
        (sql.SET_CONSUMER_BLOCKED, (0, 1), "INTEGER PRIMARY KEY"),
    ],
)
def test_hot_statement_uses_its_index(
    conn: sqlite3.Connection, statement: str, params: tuple, expected: str
) -> None:
    text = plan(conn, statement, params)
    assert expected in text, text
    assert "SCAN mq_entries" not in text.replace("SCAN mq_entries USING", ""), text


def test_queue_subqueries_use_the_primary_key(conn: sqlite3.Connection) -> None:
    """The per-row lookups of a queue's delivery limit and dead-letter exchange."""
    for statement, params in ((sql.REQUEUE_ENTRY, (1, 2)), (sql.REJECT_ENTRY, (1, 2))):
        text = plan(conn, statement, params)
        assert "SEARCH q USING INTEGER PRIMARY KEY" in text, text


def test_count_triggers_update_their_queue_by_primary_key(conn: sqlite3.Connection) -> None:
    """The mq_entries_count_* triggers (length limits) run one primary-key UPDATE each."""
    text = plan(conn, "UPDATE mq_queues SET ready_count = ready_count + 1 WHERE id = ?", (1,))
    assert "INTEGER PRIMARY KEY" in text, text


def test_release_trigger_finds_sibling_entries_by_index(conn: sqlite3.Connection) -> None:
    """The partial index holds shared messages' entries only; the trigger's lookup (message_id
    = ?, which implies NOT NULL) can still use it."""
    text = plan(conn, "SELECT 1 FROM mq_entries WHERE message_id = ?", (1,))
    assert "ix_mq_entries_message_id" in text, text


def test_queue_wide_statements_use_the_ready_index_prefix(conn: sqlite3.Connection) -> None:
    """ix_mq_entries_ready starts with queue_id and holds every entry: deleting a queue's
    entries (the foreign key's ON DELETE CASCADE) and counting them never scan."""
    for statement in ("DELETE FROM mq_entries WHERE queue_id = ?", sql.PURGE_READY):
        text = plan(conn, statement, (1,))
        assert "ix_mq_entries_ready (queue_id=?" in text, text


def test_leasing_reads_the_queue_head_in_index_order(conn: sqlite3.Connection) -> None:
    """Ready entries come first in the index, in delivery order: no sort for ORDER BY."""
    text = plan(conn, sql.SELECT_READY, (1, 0, 10))
    assert "lease_token=?" in text, text
    assert "TEMP B-TREE" not in text, text


def test_no_plain_begin_in_the_package() -> None:
    """Every write transaction starts with BEGIN IMMEDIATE (no deferred upgrade deadlocks)."""
    package = Path(schema.__file__).parent
    offenders = []
    for source in package.rglob("*.py"):
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if '"BEGIN' in line and "BEGIN IMMEDIATE" not in line:
                offenders.append(f"{source.name}:{number}: {line.strip()}")
    assert offenders == []
