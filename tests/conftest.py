"""Shared fixtures: a real SQLite file per test and a fake clock for lease tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqstore.testing import ManualClock

# The fake clock is the testing kit's (mqstore.testing, also a pytest plugin for users).
FakeClock = ManualClock


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """A fresh broker file (created by the first connection)."""
    return str(tmp_path / "broker.db")


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def blocking_connect(db_path: str):
    """Open ``mqstore.BlockingConnection``s on ``db_path``; every one still open is closed
    at teardown. ``blocking_connect(clock=..., **params)`` passes ConnectionParameters."""
    import mqstore

    opened: list[mqstore.BlockingConnection] = []

    def connect(**params: object) -> mqstore.BlockingConnection:
        params.setdefault("path", db_path)
        connection = mqstore.BlockingConnection(mqstore.ConnectionParameters(**params))
        opened.append(connection)
        return connection

    yield connect
    for connection in reversed(opened):
        connection.close()
