"""Bring an mqstore file's schema to this code's head, safely under concurrency.

Callers check first, cheaply, with the stdlib connection they already hold::

    if migrate.current_revision(conn) != migrate.HEAD:
        migrate.migrate(path)

``migrate`` imports alembic (slow) only when it is actually called. It sets WAL mode, then
takes SQLite's write lock with ``BEGIN IMMEDIATE`` and, under that one lock, re-reads the
revision and runs any missing migrations, so several processes racing to open a fresh file
upgrade it exactly once. mqstore's revision lives in ``mq_schema_version``; an application's
own ``alembic_version`` table in the same file is never read or written.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from .errors import SchemaVersionError, StoreBusyError

HEAD = "0008"
VERSION_TABLE = "mq_schema_version"

#: The alembic environment shipped inside the package (works from an installed wheel).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Seconds SQLite's busy handler waits for another process's lock.
BUSY_TIMEOUT_S = 30.0

_WAL_MAX_BACKOFF_S = 0.1


def current_revision(conn: sqlite3.Connection) -> str | None:
    """Return the mqstore schema revision recorded in the file ``conn`` is open on.

    ``None`` when the version table is absent or empty (a fresh file, or one holding only an
    application's tables). The caller owns ``conn``; nothing is written. Should the table ever
    hold several rows (branched history, which mqstore does not use), they are returned
    joined by commas, which no code knows, so ``migrate`` refuses the file.
    """
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)
    ).fetchone()
    if found is None:
        return None
    rows = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
    if not rows:
        return None
    return ",".join(sorted(str(row[0]) for row in rows))


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


def _set_wal(engine: Any, path: str) -> None:
    """Switch the file to WAL; outside any transaction, retrying while another holds it."""
    import sqlalchemy.exc

    # The busy handler (BUSY_TIMEOUT_S) covers most waits, but SQLite reports "database is
    # locked" at once, without waiting, when it would otherwise deadlock on the lock needed
    # to change the journal mode; so retry until the same overall deadline.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                try:
                    # isolation_level is None (set on connect): no implicit BEGIN here.
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.fetchall()
                finally:
                    cursor.close()
            finally:
                raw.close()
            return
        except (sqlite3.OperationalError, sqlalchemy.exc.OperationalError) as exc:
            if not _is_locked(exc):
                raise
            if time.monotonic() >= deadline:
                raise StoreBusyError(
                    f"{path}: could not switch to WAL mode: database is locked"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, _WAL_MAX_BACKOFF_S)


def migrate(path: str) -> None:
    """Upgrade the mqstore tables in the SQLite file at ``path`` to :data:`HEAD`.

    Safe to call from several processes at once: the check and the upgrade run in one
    ``BEGIN IMMEDIATE`` transaction. Returns at once if the file is already at HEAD. Raises
    :class:`~mqstore.errors.SchemaVersionError` if the file records a revision this code
    does not know (it was written by a newer mqstore), and
    :class:`~mqstore.errors.StoreBusyError` if the write lock stays taken past
    :data:`BUSY_TIMEOUT_S`.
    """
    import sqlalchemy.exc
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import URL, create_engine, event
    from sqlalchemy.pool import NullPool

    engine = create_engine(
        URL.create("sqlite", database=str(path)),
        poolclass=NullPool,
        connect_args={"timeout": BUSY_TIMEOUT_S},
    )

    # SQLAlchemy's documented pysqlite recipe: sqlite3 emits no BEGIN of its own, and every
    # SQLAlchemy transaction starts with BEGIN IMMEDIATE, i.e. holding the write lock.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        # Takes effect only in a file that has no table yet (a new broker): its freed pages
        # can then be handed back by upkeep's incremental vacuum. A no-op anywhere else.
        dbapi_connection.execute("PRAGMA auto_vacuum=INCREMENTAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        _set_wal(engine, path)

        cfg = Config()
        # Config values go through configparser interpolation: escape '%' in the path.
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        cfg.set_main_option("path_separator", "os")
        script = ScriptDirectory.from_config(cfg)
        known = {rev.revision for rev in script.walk_revisions()}

        try:
            with engine.connect() as conn:
                conn.begin()  # BEGIN IMMEDIATE: from here on we hold the write lock
                dbapi_conn = conn.connection.dbapi_connection
                assert dbapi_conn is not None
                revision = current_revision(dbapi_conn)  # type: ignore[arg-type]
                if revision == HEAD:
                    conn.rollback()
                    return
                if revision is not None and revision not in known:
                    conn.rollback()
                    raise SchemaVersionError(
                        f"{path}: its mqstore schema is at revision {revision!r}, which this "
                        f"mqstore (schema head {HEAD!r}) does not know; the file was written "
                        "by a newer mqstore. Upgrade mqstore to open it."
                    )
                cfg.attributes["connection"] = conn
                # The connection is already in a transaction, so alembic runs every
                # migration inside it and leaves the commit to us.
                command.upgrade(cfg, "head")
                conn.commit()
        except sqlalchemy.exc.OperationalError as exc:
            if _is_locked(exc):
                raise StoreBusyError(
                    f"{path}: could not take the write lock to migrate: database is locked"
                ) from exc
            raise
    finally:
        engine.dispose()
