"""F7 (RELIABILITY.md section 4.2, R6): files that are not, or no longer, a usable broker.

Damaged files are refused with a typed error naming the file and are never modified (their
bytes are compared: reading a file with open() is safe here only because no mqstore connection
to it is open in this process, RELIABILITY.md section 2.6). A deleted or replaced file stops
durable publishes with StoreReplacedError.
"""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest

import mqstore
from mqstore.errors import SchemaVersionError

from .harness import assert_intact, connect, table_count

pytestmark = pytest.mark.crash

PAGE = 4096


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a closed, checkpointed broker holding 300 messages of 1 KiB."""
    path = tmp_path_factory.mktemp("template") / "broker.db"
    rng = random.Random(7)
    with connect(path) as conn:
        channel = conn.channel()
        channel.queue_declare("q", durable=True)
        for _ in range(300):
            channel.basic_publish("", "q", rng.randbytes(1024))
    assert not Path(f"{path}-wal").exists()  # the last close checkpointed and removed it
    return path.read_bytes()


def _damaged(template: bytes, case: str) -> bytes:
    rng = random.Random(case)
    if case == "random-text":
        return "".join(rng.choice("abcdefghij klmnop\n") for _ in range(5000)).encode()
    if case == "scribbled-header":
        return b"this is not sqlite" + template[18:]
    if case.startswith("truncated-"):
        pages = int(case.removeprefix("truncated-"))
        return template[: pages * PAGE] if pages else template[: len(template) // 2]
    if case.startswith("scribbled-page-"):
        page = int(case.removeprefix("scribbled-page-"))
        start = (page - 1) * PAGE
        return template[:start] + rng.randbytes(PAGE) + template[start + PAGE :]
    raise AssertionError(case)


DAMAGE = [
    "random-text",
    "scribbled-header",
    "truncated-3",
    "truncated-20",
    "truncated-0",  # half the file
    # Every page of the schema and the start of the data: some damage makes quick_check
    # raise, other damage is only reported as rows of its result.
    *(f"scribbled-page-{page}" for page in range(2, 25)),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_file_is_refused_with_typed_error_naming_it_and_left_unmodified(
    tmp_path: Path, template: bytes, case: str
) -> None:
    # Given a damaged broker file
    path = tmp_path / "broker.db"
    damaged = _damaged(template, case)
    path.write_bytes(damaged)

    # When mqstore opens it
    with pytest.raises(mqstore.StoreError) as excinfo:
        connect(path)

    # Then it refuses with StoreCorruptError naming the file, and wrote nothing to it
    error = excinfo.value
    del excinfo
    assert isinstance(error, mqstore.StoreCorruptError), repr(error)
    assert str(path) in str(error)
    assert path.read_bytes() == damaged


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", ["zero-length", "missing"])
def test_empty_or_missing_path_becomes_a_new_broker(tmp_path: Path, case: str) -> None:
    # Given a zero-length file, or no file at all
    path = tmp_path / "broker.db"
    if case == "zero-length":
        path.write_bytes(b"")

    # When mqstore opens it, it is a working broker
    with connect(path) as conn:
        channel = conn.channel()
        channel.queue_declare("q", durable=True)
        channel.basic_publish("", "q", b"hello")
        method, _, body = channel.basic_get("q", auto_ack=True)
    assert method is not None and body == b"hello"
    assert_intact(path)


@pytest.mark.timeout(30)
def test_database_with_other_tables_gets_mqstore_tables_beside_them(tmp_path: Path) -> None:
    # Given an application's database with its own tables (and its own alembic history)
    path = tmp_path / "app.db"
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    app.executemany("INSERT INTO users (name) VALUES (?)", [("ada",), ("grace",)])
    app.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    app.execute("INSERT INTO alembic_version VALUES ('app_rev_1')")
    app.close()

    # When mqstore opens it and is used
    with connect(path) as conn:
        channel = conn.channel()
        channel.queue_declare("q", durable=True)
        channel.basic_publish("", "q", b"hello")
        _, _, body = channel.basic_get("q", auto_ack=True)
    assert body == b"hello"

    # Then the application's tables are untouched and mqstore's sit beside them
    app = sqlite3.connect(path, isolation_level=None)
    try:
        assert app.execute("SELECT name FROM users ORDER BY id").fetchall() == [
            ("ada",),
            ("grace",),
        ]
        assert app.execute("SELECT version_num FROM alembic_version").fetchall() == [("app_rev_1",)]
        tables = {r[0] for r in app.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        app.close()
    assert {"users", "alembic_version", "mq_queues", "mq_messages", "mq_entries"} <= tables
    assert_intact(path)


@pytest.mark.timeout(30)
def test_schema_from_a_newer_mqstore_is_refused(tmp_path: Path) -> None:
    # Given a broker file whose mq_schema_version says '9999'
    path = tmp_path / "broker.db"
    with connect(path) as conn:
        conn.channel().queue_declare("q", durable=True)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("UPDATE mq_schema_version SET version_num = '9999'")
    raw.close()

    # When mqstore opens it, then it refuses with SchemaVersionError naming file and version
    with pytest.raises(SchemaVersionError) as excinfo:
        connect(path)
    error = excinfo.value
    del excinfo
    assert str(path) in str(error) and "9999" in str(error)
    assert table_count(path, "SELECT count(*) FROM mq_schema_version WHERE version_num = '9999'")
    assert_intact(path)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["unlinked", "replaced"])
def test_file_deleted_or_replaced_while_open__next_durable_publish_refused(
    tmp_path: Path, how: str
) -> None:
    # Given an open connection that has published
    path = tmp_path / "broker.db"
    other = tmp_path / "other.db"
    if how == "replaced":
        sqlite3.connect(other).close()  # an (empty) SQLite file to move over the broker
    conn = connect(path)
    try:
        channel = conn.channel()
        channel.queue_declare("q", durable=True)
        channel.basic_publish("", "q", b"before")

        # When the file is unlinked (or another file renamed over it); no open() of it here
        if how == "unlinked":
            os.unlink(path)
        else:
            os.replace(other, path)

        # Then the next durable publish is refused: it would land in an orphaned file
        with pytest.raises(mqstore.StoreReplacedError) as excinfo:
            channel.basic_publish("", "q", b"after")
        assert str(path) in str(excinfo.value)
        with pytest.raises(mqstore.StoreReplacedError):
            channel.basic_publish("", "q", b"again")
    finally:
        conn.close()
