"""The ``mqstore`` command, run as a real subprocess (``python -m mqstore``), the way a user
runs it: exit codes and output are the interface under test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import mqstore


def mq(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqstore", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A broker file holding a durable queue 'jobs' with no messages."""
    path = str(tmp_path / "broker.db")
    with mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path)) as conn:
        conn.channel().queue_declare("jobs", durable=True)
    return path


def test_demo_redelivers_the_killed_workers_job_and_loses_nothing(tmp_path: Path) -> None:
    result = mq("demo", "--messages", "6", cwd=tmp_path, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "mqstore-demo.db").exists()  # the default, in the current directory
    out = result.stdout
    assert "SIGKILL" in out
    assert re.search(r"jobs published:\s+6\b", out), out
    assert re.search(r"jobs processed:\s+6\b", out), out
    assert re.search(r"lost:\s+0\b", out), out
    redelivered = re.search(r"redelivered:\s+(\d+)", out)
    assert redelivered is not None and int(redelivered.group(1)) >= 1, out
    assert "redelivered=True" in out


def test_publish_then_get_round_trips_the_body(db: str, tmp_path: Path) -> None:
    published = mq("publish", "--db", db, "--routing-key", "jobs", "héllo wörld", cwd=tmp_path)
    assert published.returncode == 0, published.stderr

    got = mq("get", "--db", db, "jobs", "--ack", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout == "héllo wörld\n"

    empty = mq("get", "--db", db, "jobs", cwd=tmp_path)
    assert empty.returncode == 0
    assert empty.stdout == ""
    assert "empty" in empty.stderr


def test_get_without_ack_leaves_the_message_for_redelivery(db: str, tmp_path: Path) -> None:
    assert mq("publish", "--db", db, "--routing-key", "jobs", "x", cwd=tmp_path).returncode == 0
    first = mq("get", "--db", db, "jobs", cwd=tmp_path)
    assert first.stdout == "x\n"
    assert "redelivered=False" in first.stderr
    second = mq("get", "--db", db, "jobs", "--ack", cwd=tmp_path)
    assert second.stdout == "x\n"
    assert "redelivered=True" in second.stderr


def test_queues_lists_a_declared_queue_with_its_count(db: str, tmp_path: Path) -> None:
    with mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db)) as conn:
        channel = conn.channel()
        channel.queue_declare("empty-one")
        for body in (b"a", b"b", b"c"):
            channel.basic_publish("", "jobs", body)

    result = mq("queues", "--db", db, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["name", "ready", "consumers"]
    assert ["jobs", "3", "0"] in rows
    assert ["empty-one", "0", "0"] in rows


def test_version(tmp_path: Path) -> None:
    result = mq("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"mqstore {mqstore.__version__}"


def test_get_from_a_missing_queue_fails_naming_the_queue(db: str, tmp_path: Path) -> None:
    result = mq("get", "--db", db, "no-such-queue", cwd=tmp_path)
    assert result.returncode != 0
    assert "404" in result.stderr
    assert "no-such-queue" in result.stderr
    assert "Traceback" not in result.stderr


def test_unroutable_publish_fails_instead_of_dropping_silently(db: str, tmp_path: Path) -> None:
    result = mq("publish", "--db", db, "--routing-key", "nowhere", "x", cwd=tmp_path)
    assert result.returncode != 0
    assert "unroutable" in result.stderr


def test_operator_commands_refuse_a_missing_file(tmp_path: Path) -> None:
    result = mq("queues", "--db", "typo.db", cwd=tmp_path)
    assert result.returncode != 0
    assert "typo.db" in result.stderr
    assert not (tmp_path / "typo.db").exists()
