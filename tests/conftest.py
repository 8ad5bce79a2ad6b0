"""Shared fixtures: a real SQLite file per test and a fake clock for lease tests."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest


class FakeClock:
    """A clock tests move by hand (``ConnectionParameters(clock=...)``).

    ``now_ms`` drives lease deadlines, ``wall_ms`` user-visible timestamps; ``advance``
    moves both. Thread-safe: the engine's upkeep thread reads it while a test advances it.
    Connections that must share one engine have to share the same FakeClock object."""

    def __init__(self, now_ms: int = 1_000_000, wall_ms: int = 1_700_000_000_000) -> None:
        self._lock = threading.Lock()
        self._now = now_ms
        self._wall = wall_ms

    def now_ms(self) -> int:
        with self._lock:
            return self._now

    def wall_ms(self) -> int:
        with self._lock:
            return self._wall

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += ms
            self._wall += ms


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
