"""The alembic migrations shipped in mqstore/migrations, and mqstore.migrate.migrate()."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import mqstore
import mqstore.migrate as mq_migrate
from mqstore.errors import SchemaVersionError
from mqstore.migrate import HEAD, VERSION_TABLE, current_revision, migrate
from mqstore.schema import metadata

# The directory holding the ``mqstore`` package (the repository root in a checkout).
PACKAGE_DIR = Path(next(iter(mqstore.__path__))).resolve()
SOURCE_ROOT = PACKAGE_DIR.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


def _schema(path: Path) -> list[tuple[str, str, str, str | None]]:
    """sqlite_master rows, normalised, without mqstore's version table or SQLite's own."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE tbl_name != ? AND NOT (type = 'table' AND name LIKE 'sqlite\\_%' ESCAPE '\\')",
            (VERSION_TABLE,),
        ).fetchall()
    finally:
        conn.close()
    return sorted(
        (t, n, tbl, None if sql is None else " ".join(sql.split())) for t, n, tbl, sql in rows
    )


def _create_all_schema(tmp_path: Path) -> list[tuple[str, str, str, str | None]]:
    ref = tmp_path / "create_all.db"
    engine = sa.create_engine(f"sqlite:///{ref}")
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    return _schema(ref)


def _only_mq(name: str | None, type_: str, parent_names: object) -> bool:
    return type_ != "table" or (name is not None and name.startswith("mq_"))


def _diff(path: Path, **opts: object) -> list[object]:
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={"version_table": VERSION_TABLE, "compare_server_default": True, **opts},
            )
            return list(compare_metadata(ctx, metadata))
    finally:
        engine.dispose()


def _revision(path: Path) -> str | None:
    conn = sqlite3.connect(path)
    try:
        return current_revision(conn)
    finally:
        conn.close()


def test_head_is_the_script_directorys_only_head() -> None:
    script = ScriptDirectory(str(mq_migrate.MIGRATIONS_DIR))
    assert script.get_heads() == [HEAD]


def test_migrated_file_matches_metadata(tmp_path: Path) -> None:
    path = tmp_path / "mq.db"
    assert not path.exists()
    migrate(str(path))
    assert _revision(path) == HEAD
    assert _diff(path) == []


def test_migrations_equal_create_all(tmp_path: Path) -> None:
    path = tmp_path / "mq.db"
    migrate(str(path))
    migrated = _schema(path)
    expected = _create_all_schema(tmp_path)
    assert migrated == expected

    by_name = {name: (type_, sql) for type_, name, _tbl, sql in migrated}
    assert by_name["mq_entries_release_message"][0] == "trigger"
    assert "AFTER DELETE ON mq_entries" in (by_name["mq_entries_release_message"][1] or "")
    assert by_name["ix_mq_entries_ready"][1] == (
        "CREATE INDEX ix_mq_entries_ready ON mq_entries (queue_id, lease_token, priority DESC, id)"
    )
    assert "ix_mq_entries_queue_id" not in by_name
    # Sized entries are counted in by store.insert_message (0008), not by an INSERT trigger.
    assert "mq_entries_count_insert" not in by_name
    assert (
        by_name["mq_entries_count_delete"][0] == by_name["mq_entries_count_lease"][0] == "trigger"
    )
    assert (by_name["ix_mq_entries_message_id"][1] or "").endswith("WHERE message_id IS NOT NULL")
    for name in ("ix_mq_entries_lease_expiry", "ix_mq_entries_lease_owner"):
        assert (by_name[name][1] or "").endswith("WHERE lease_token IS NOT NULL")
    tables = {name for type_, name, _t, _s in migrated if type_ == "table"}
    assert tables == set(metadata.tables)


def test_trigger_releases_message_after_last_entry(tmp_path: Path) -> None:
    path = tmp_path / "mq.db"
    migrate(str(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO mq_queues (id, name, durable, auto_delete, consumer_timeout_ms,"
            " created_at_ms) VALUES (1, 'q1', 1, 0, 0, 0), (2, 'q2', 1, 0, 0, 0)"
        )
        conn.execute(
            "INSERT INTO mq_messages (id, exchange, routing_key, body, published_at_ms)"
            " VALUES (7, '', 'k', x'00', 0)"
        )
        conn.execute("INSERT INTO mq_entries (queue_id, message_id) VALUES (1, 7), (2, 7)")
        conn.execute("DELETE FROM mq_entries WHERE queue_id = 1")
        assert conn.execute("SELECT count(*) FROM mq_messages").fetchone() == (1,)
        conn.execute("DELETE FROM mq_entries WHERE queue_id = 2")
        assert conn.execute("SELECT count(*) FROM mq_messages").fetchone() == (0,)
    finally:
        conn.close()


def test_downgrade_drops_everything(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    path = tmp_path / "mq.db"
    migrate(str(path))
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(mq_migrate.MIGRATIONS_DIR))
            cfg.set_main_option("path_separator", "os")
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
    finally:
        engine.dispose()
    assert _schema(path) == []
    assert _revision(path) is None
    migrate(str(path))  # and back up again
    assert _schema(path) == _create_all_schema(tmp_path)


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "mq.db"
    migrate(str(path))
    before = _schema(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("INSERT INTO mq_meta (key, value) VALUES ('boot_id', 'b1')")
    finally:
        conn.close()
    migrate(str(path))
    migrate(str(path))
    assert _schema(path) == before
    conn = sqlite3.connect(path)
    try:
        assert conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [(HEAD,)]
        assert conn.execute("SELECT key, value FROM mq_meta").fetchall() == [("boot_id", "b1")]
    finally:
        conn.close()


def test_current_revision_without_version_table(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "empty.db")
    try:
        assert current_revision(conn) is None
    finally:
        conn.close()


def test_concurrent_processes_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "mq.db"
    start = tmp_path / "start"
    child = textwrap.dedent(
        """
        import os, sys, time
        import alembic.command  # pay the import cost before the barrier
        from mqstore.migrate import migrate

        path, ready, start = sys.argv[1:4]
        open(ready, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(start):
            if time.monotonic() > deadline:
                sys.exit("start file never appeared")
            time.sleep(0.001)
        migrate(path)
        """
    )
    procs = []
    readies = []
    for i in range(4):
        ready = tmp_path / f"ready-{i}"
        readies.append(ready)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", child, str(path), str(ready), str(start)],
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in readies):
            assert time.monotonic() < deadline, "children never became ready"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        start.touch()
        results = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], results

    conn = sqlite3.connect(path)
    try:
        assert current_revision(conn) == HEAD
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [(HEAD,)]
    finally:
        conn.close()
    assert _schema(path) == _create_all_schema(tmp_path)


def test_unknown_revision_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "from-the-future.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        conn.execute(f"INSERT INTO {VERSION_TABLE} VALUES ('9999')")
    finally:
        conn.close()
    before = _schema(path)

    with pytest.raises(SchemaVersionError) as info:
        migrate(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "9999" in message
    assert "newer mqstore" in message

    assert _revision(path) == "9999"
    assert _schema(path) == before  # nothing was created


def test_user_tables_and_alembic_version_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
        conn.execute("CREATE INDEX ix_orders_item ON orders (item)")
        conn.execute("INSERT INTO orders (item) VALUES ('apple'), ('pear')")
        conn.execute(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
        conn.execute("INSERT INTO alembic_version VALUES ('ae1027a6acf')")
    finally:
        conn.close()
    user_schema = _schema(path)

    migrate(str(path))

    after = _schema(path)
    assert set(user_schema) <= set(after)
    mq_rows = [row for row in after if row not in user_schema]
    assert sorted(mq_rows) == _create_all_schema(tmp_path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT id, item FROM orders ORDER BY id").fetchall() == [
            (1, "apple"),
            (2, "pear"),
        ]
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("ae1027a6acf",)
        ]
        assert current_revision(conn) == HEAD
    finally:
        conn.close()
    assert _diff(path, include_name=_only_mq) == []


def test_script_location_is_inside_the_package() -> None:
    assert mq_migrate.MIGRATIONS_DIR == PACKAGE_DIR / "migrations"
    if getattr(mqstore, "__file__", None):
        assert Path(mqstore.__file__).resolve().parent / "migrations" == mq_migrate.MIGRATIONS_DIR
    assert (mq_migrate.MIGRATIONS_DIR / "env.py").is_file()
    assert (mq_migrate.MIGRATIONS_DIR / "script.py.mako").is_file()


def test_migrate_from_installed_copy_in_another_cwd(tmp_path: Path) -> None:
    # Lay the package out as a wheel would, somewhere else: its Python modules, plus only the
    # migration files pyproject's package-data globs ship. Then migrate with the working
    # directory elsewhere again: nothing may resolve through the checkout or the cwd.
    site = tmp_path / "site"
    dest = site / "mqstore"
    shutil.copytree(
        PACKAGE_DIR,
        dest,
        ignore=shutil.ignore_patterns("__pycache__", "migrations", "*.pyc"),
    )
    for pattern in ("migrations/*.py", "migrations/versions/*.py", "migrations/*.mako"):
        for src in PACKAGE_DIR.glob(pattern):
            target = dest / src.relative_to(PACKAGE_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    path = tmp_path / "mq.db"
    code = textwrap.dedent(
        """
        import sys
        from mqstore import migrate
        migrate.migrate(sys.argv[1])
        print(migrate.MIGRATIONS_DIR)
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == (dest / "migrations").resolve()
    assert _revision(path) == HEAD
    assert _schema(path) == _create_all_schema(tmp_path)
    assert not any(cwd.iterdir())


def _alembic(path: Path, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(mq_migrate.MIGRATIONS_DIR))
            cfg.set_main_option("path_separator", "os")
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        engine.dispose()


_MESSAGES_OF = (
    "SELECT e.id, e.queue_id, e.lease_token, coalesce(e.body, m.body), "
    "coalesce(e.routing_key, m.routing_key) FROM mq_entries e "
    "LEFT JOIN mq_messages m ON m.id = e.message_id ORDER BY e.id"
)


def test_0007_keeps_entries_and_leases_and_inlines_new_messages(tmp_path: Path) -> None:
    """A file written before single-queue messages were inlined keeps every entry (ids,
    leases, shared bodies) across the table rebuild, and downgrading moves inline messages
    back into mq_messages."""
    path = tmp_path / "mq.db"
    _alembic(path, "upgrade", "0006")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO mq_queues (id, name, durable, auto_delete, consumer_timeout_ms,"
            " created_at_ms) VALUES (1, 'q1', 1, 0, 0, 0), (2, 'q2', 1, 0, 0, 0)"
        )
        conn.execute(
            "INSERT INTO mq_messages (id, exchange, routing_key, body, published_at_ms)"
            " VALUES (7, '', 'shared', x'07', 0), (8, '', 'q1', x'08', 0)"
        )
        conn.execute(
            "INSERT INTO mq_entries (id, queue_id, message_id, lease_token, lease_owner)"
            " VALUES (10, 1, 7, NULL, NULL), (11, 2, 7, 99, 5), (12, 1, 8, NULL, NULL)"
        )
    finally:
        conn.close()
    migrate(str(path))
    assert _revision(path) == HEAD
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert conn.execute(_MESSAGES_OF).fetchall() == [
            (10, 1, None, b"\x07", "shared"),
            (11, 2, 99, b"\x07", "shared"),
            (12, 1, None, b"\x08", "q1"),
        ]
        # A message inlined in its entry, as a single-queue publish now stores it.
        conn.execute(
            "INSERT INTO mq_entries (id, queue_id, exchange, routing_key, body, published_at_ms)"
            " VALUES (13, 2, '', 'q2', x'0d', 0)"
        )
        conn.execute("DELETE FROM mq_entries WHERE id = 10")
        assert conn.execute("SELECT id FROM mq_messages ORDER BY id").fetchall() == [(7,), (8,)]
    finally:
        conn.close()
    assert _schema(path) == _create_all_schema(tmp_path)

    _alembic(path, "downgrade", "0006")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert conn.execute(
            "SELECT e.id, e.lease_token, m.body FROM mq_entries e "
            "JOIN mq_messages m ON m.id = e.message_id ORDER BY e.id"
        ).fetchall() == [(11, 99, b"\x07"), (12, None, b"\x08"), (13, None, b"\x0d")]
    finally:
        conn.close()
