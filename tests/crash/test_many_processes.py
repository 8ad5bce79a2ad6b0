"""F8, F9 and the multi-process work queue (RELIABILITY.md section 4.2, pitfalls 2.1 and 2.10):
several processes opening, migrating, publishing and consuming one file at once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mqstore

from .harness import (
    REPO_ROOT,
    Child,
    History,
    assert_history_ok,
    assert_intact,
    children,
    connect,
    drain,
    table_count,
    wait_until,
)

pytestmark = pytest.mark.crash


def _acked(consumers: list[Child]) -> set[str]:
    return {fields["id"] for child in consumers for _, fields in child.events("acked")}


def _assert_no_busy(processes: list[Child]) -> None:
    for child in processes:
        assert not child.events("error"), child.describe()
        assert "locked" not in child.stderr and "StoreBusyError" not in child.stderr, (
            child.describe()
        )


@pytest.mark.timeout(60)
def test_four_processes_open_a_fresh_file_at_once__all_succeed(
    crash_db: str, tmp_path: Path
) -> None:
    # Given four processes ready to open the same not-yet-existing file
    start = tmp_path / "start"
    assert not Path(crash_db).exists()
    with children() as started:
        publishers = [
            Child(
                "publish",
                crash_db,
                "--start-file",
                str(start),
                "--declare",
                "--queue",
                "q",
                "--prefix",
                f"p{i}",
                "--count",
                "25",
                name=f"opener-{i}",
            )
            for i in range(4)
        ]
        started.extend(publishers)
        for child in publishers:
            child.wait_for("waiting")

        # When they are released at the same moment (the start file appears)
        start.touch()

        # Then every one migrates-or-finds the schema, declares and publishes without error
        for child in publishers:
            child.finish(timeout=40)
            assert child.events("done"), child.describe()
    _assert_no_busy(publishers)
    history = History()
    for child in publishers:
        history.record_publisher(child)
    with connect(crash_db) as conn:
        assert drain(conn.channel(), "q", history, "drainer") == 100
    assert_history_ok(history)
    assert table_count(crash_db, "SELECT count(*) FROM mq_schema_version") == 1
    assert_intact(crash_db)


@pytest.mark.timeout(60)
def test_writer_storm__publishers_consumers_and_churn_never_see_busy(
    crash_db: str, tmp_path: Path
) -> None:
    # Given a durable queue
    stop = tmp_path / "stop"
    with connect(crash_db) as conn:
        conn.channel().queue_declare("q", durable=True)

    # When 3 publishers, 3 consumers (prefetch 5) and a declare/bind/delete churner all run
    # at once, each in its own process, each write in BEGIN IMMEDIATE with group commit
    with children() as started:
        consumers = [
            Child(
                "consume",
                crash_db,
                "--queue",
                "q",
                "--prefetch",
                "5",
                "--stop-file",
                str(stop),
                name=f"consumer-{i}",
            )
            for i in range(3)
        ]
        started.extend(consumers)
        for child in consumers:
            child.wait_for("ready")
        publishers = [
            Child(
                "publish",
                crash_db,
                "--queue",
                "q",
                "--prefix",
                f"s{i}",
                "--count",
                "150",
                name=f"publisher-{i}",
            )
            for i in range(3)
        ]
        churner = Child("churn", crash_db, "--count", "40", name="churner")
        started.extend([*publishers, churner])
        for child in [*publishers, churner]:
            child.finish(timeout=45)

        # Then every publish returned, every message was acked, nobody saw "database is locked"
        history = History()
        for child in publishers:
            history.record_publisher(child)
        expected = {mid for mid, outcome in history.attempts.items() if outcome == "ok"}
        assert len(expected) == 450
        wait_until(lambda: _acked(consumers) >= expected, timeout=30, what="all acks")
        stop.touch()
        for child in consumers:
            child.finish()
    for child in consumers:
        history.record_consumer(child)
    _assert_no_busy([*publishers, *consumers, churner])
    assert_history_ok(history)
    assert table_count(crash_db, "SELECT count(*) FROM mq_entries") == 0
    assert_intact(crash_db)


@pytest.mark.timeout(60)
def test_work_queue__four_consumers_prefetch_1_process_400_messages_exactly_once(
    crash_db: str, tmp_path: Path
) -> None:
    # Given 400 messages in a durable queue
    stop = tmp_path / "stop"
    history = History()
    with connect(crash_db) as conn:
        channel = conn.channel()
        channel.queue_declare("work", durable=True)
        for i in range(400):
            channel.basic_publish("", "work", f"w-{i}".encode())
            history.published(f"w-{i}")

    # When four consumer processes with prefetch 1, released at the same moment, drain it,
    # acking each message
    start = tmp_path / "start"
    with children() as started:
        consumers = [
            Child(
                "consume",
                crash_db,
                "--queue",
                "work",
                "--prefetch",
                "1",
                "--start-file",
                str(start),
                "--stop-file",
                str(stop),
                name=f"worker-{i}",
            )
            for i in range(4)
        ]
        started.extend(consumers)
        for child in consumers:
            child.wait_for("ready")
        start.touch()
        expected = set(history.attempts)
        wait_until(lambda: _acked(consumers) >= expected, timeout=45, what="400 acks")
        stop.touch()
        for child in consumers:
            child.finish()

    # Then each message was delivered once and acked once, none lost, none left
    for child in consumers:
        history.record_consumer(child)
    verdict = assert_history_ok(history)
    assert len(history.deliveries) == 400
    assert all(d.ack == "ok" and not d.redelivered for d in history.deliveries)
    shares = {child.name: len(child.events("acked")) for child in consumers}
    print(f"FIGURE work queue: 400 messages over 4 workers, acks per worker {shares}")
    assert verdict.published_ok == 400
    assert table_count(crash_db, "SELECT count(*) FROM mq_entries") == 0
    assert_intact(crash_db)


# --- F9, statically: no deferred transactions ---------------------------------------------------

_BEGIN = re.compile(r"^\s*BEGIN\b(?!\s+IMMEDIATE\b)")
_BEGIN_ANY_CASE = re.compile(_BEGIN.pattern, re.IGNORECASE)
_EXECUTE = {"execute", "executemany", "executescript", "exec_driver_sql", "text"}


def _package_sources() -> list[Path]:
    package = Path(mqstore.__file__).resolve().parent
    assert package.is_relative_to(REPO_ROOT), "run the crash tests against the checkout"
    return sorted(package.rglob("*.py"))


def _deferred_begins(tree: ast.AST) -> list[ast.Constant]:
    """SQL strings that open a transaction other than BEGIN IMMEDIATE: any string constant
    starting with upper-case BEGIN, and any SQL passed to execute() and friends."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _BEGIN.match(node.value):
                found.append(node)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _EXECUTE
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and _BEGIN_ANY_CASE.match(node.args[0].value)
        ):
            found.append(node.args[0])
    return list({id(node): node for node in found}.values())


def _implicit_transaction_connects(tree: ast.AST, source: str) -> list[ast.Call]:
    """``sqlite3.connect`` calls without ``isolation_level=None``: Python would issue a
    deferred BEGIN before DML on them. Read-only connections (``mode=ro`` in the enclosing
    function) run no DML and are exempt."""
    found = []
    scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "connect"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "sqlite3"
        ):
            continue
        level = {k.arg: k.value for k in node.keywords}.get("isolation_level")
        if isinstance(level, ast.Constant) and level.value is None:
            continue
        enclosing = [f for f in scopes if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
        body = ast.get_source_segment(source, enclosing[-1]) if enclosing else ""
        if "mode=ro" not in (body or ""):
            found.append(node)
    return found


def test_no_code_in_mqstore_opens_a_deferred_transaction() -> None:
    """Every transaction mqstore opens is BEGIN IMMEDIATE (a deferred one can fail with
    SQLITE_BUSY_SNAPSHOT at once, without the busy handler: RELIABILITY.md section 2.1)."""
    offenders = []
    for path in _package_sources():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        for node in _deferred_begins(tree):
            offenders.append(f"{path.name}:{node.lineno}: {str(node.value)[:40]!r}")
        for call in _implicit_transaction_connects(tree, source):
            offenders.append(f"{path.name}:{call.lineno}: sqlite3.connect, legacy transactions")
    assert offenders == []


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ('conn.execute("BEGIN")', 1),
        ('conn.execute("begin deferred")', 1),
        ('SQL = "BEGIN TRANSACTION"', 1),
        ('conn.execute("BEGIN EXCLUSIVE")', 1),
        ('conn.execute("BEGIN IMMEDIATE")', 0),
        ('T = "CREATE TRIGGER t AFTER DELETE ON x BEGIN DELETE FROM y; END"', 0),
        ('@event.listens_for(engine, "begin")\ndef f(): pass', 0),
        ("def f():\n    sqlite3.connect(path)", 1),
        ("def f():\n    sqlite3.connect(path, isolation_level=None)", 0),
        ("def f():\n    u = p + '?mode=ro'\n    sqlite3.connect(u, uri=True)", 0),
    ],
)
def test_deferred_transaction_detector(source: str, flagged: int) -> None:
    tree = ast.parse(source)
    found = _deferred_begins(tree) + _implicit_transaction_connects(tree, source)
    assert len(found) == flagged
