"""A kit for testing your own code's crash recovery against mqstore, and a pytest plugin.

Installed with mqstore, the plugin is loaded by pytest on its own (entry point ``pytest11``)
and adds two fixtures:

- ``mqstore_clock``: a :class:`ManualClock`, which moves only when the test says so;
- ``mqstore_broker``: a :class:`Broker` on a fresh file under ``tmp_path``, driven by that
  clock; every connection it opened is closed at teardown.

::

    def test_job_survives_a_worker_crash(mqstore_broker):
        worker = mqstore_broker.connect()
        channel = worker.channel()
        channel.queue_declare("jobs")
        channel.basic_publish("", "jobs", b"job-1")
        channel.basic_get("jobs")                      # leased, never acked
        simulate_crash(worker)                         # as SIGKILL: no cleanup at all
        assert mqstore_broker.messages("jobs")[0].state == "leased"
        mqstore_broker.recover()                       # what a restarted process does
        [job] = mqstore_broker.messages("jobs")
        assert (job.state, job.redelivered) == ("ready", True)

How a crash is simulated (and why): a connection registers a session row holding its process
id and that process's start time; leases, consumers and exclusive queues point at it. When a
process dies, any other mqstore process sees that the pid is gone (or reused: the start time
differs) and reclaims the session. A connection of the *test* process cannot die alone, so
:func:`simulate_crash` drops its in-process state without telling the file anything: no
requeue, no consumer removal, no session close. Its session is no longer renewed, so its
leases run out at their deadline (:meth:`Broker.advance`), exactly as a frozen or killed
process's would. Its session row still names this (live) process, so nobody reclaims it early;
:meth:`Broker.recover` then rewrites the row's ``process_start`` to a value no process can
have (:data:`CRASHED`) and runs mqstore's reaper, which now judges the session's process
dead, as a process opening the file after the crash does.

Connections must read the broker's clock: open them with :meth:`Broker.connect`, or pass
``clock=broker.clock`` (:meth:`Broker.parameters`). A process whose connections use two
different clocks on one file would compare lease deadlines taken on one with the other.

The inspection helpers read the file through their own short-lived SQLite connection (one
statement each, so each answer is one consistent snapshot); they never use ``open()`` on it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import pytest
except ImportError:  # the kit works without pytest; only the fixtures need it
    pytest = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .aio import AsyncConnection
    from .blocking import BlockingConnection, ConnectionParameters

__all__ = [
    "CRASHED",
    "Broker",
    "ManualClock",
    "MessageInfo",
    "QueueInfo",
    "SessionInfo",
    "advance",
    "simulate_crash",
]

#: The ``process_start`` that :meth:`Broker.recover` writes into a crashed connection's
#: session row: no process has it, so mqstore's reaper takes the session for a dead one.
CRASHED = "crashed (mqstore.testing)"


class ManualClock:
    """A clock that moves only when told to (``ConnectionParameters(clock=...)``).

    ``now_ms`` drives lease deadlines, ``wall_ms`` user-visible timestamps (and TTLs);
    :meth:`advance` moves both, :meth:`jump_wall` the wall clock alone (as an NTP step or
    ``date -s`` would; lease deadlines must not move). Thread-safe: the engine's upkeep
    thread reads it while a test moves it. Connections that must share one engine (and so
    one group commit) share one ManualClock object.

    Args:
        now_ms: the starting value of the lease clock, in milliseconds.
        wall_ms: the starting wall-clock time, in epoch milliseconds.
    """

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
        """Let ``ms`` milliseconds pass on both clocks.

        Raises:
            ValueError: ``ms`` is negative (the lease clock never goes back).
        """
        if ms < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += ms
            self._wall += ms

    def jump_wall(self, ms: int) -> None:
        """Step the wall clock by ``ms`` (either way); the lease clock stays put."""
        with self._lock:
            self._wall += ms

    def __repr__(self) -> str:
        return f"ManualClock(now_ms={self.now_ms()}, wall_ms={self.wall_ms()})"


def advance(clock: ManualClock, ms: int, *, broker: Broker | None = None) -> None:
    """Move ``clock`` forward by ``ms``; with ``broker``, then run its upkeep
    (:meth:`Broker.tick`) so leases past their deadline are ready again."""
    clock.advance(ms)
    if broker is not None:
        broker.tick()


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """One queue as stored: counts of ready and leased messages and of consumers."""

    name: str
    ready: int
    leased: int
    consumers: int
    durable: bool
    exclusive: bool
    auto_delete: bool


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message in one queue, in delivery order.

    ``state`` is ``"ready"`` or ``"leased"``. ``delivery_count`` counts the deliveries so
    far (0 for a message never delivered). ``redelivered`` is the flag its current delivery
    carried (leased) or its next one will carry (ready). ``lease_owner`` is the session id
    of the connection holding it, ``owner_pid`` and ``owner_name`` that connection's process
    id and ``client_name``; all three are None when ready (and the last two when the
    owner's session is already gone).
    """

    entry_id: int
    body: bytes
    exchange: str
    routing_key: str
    priority: int
    state: str
    delivery_count: int
    redelivered: bool
    lease_owner: int | None
    owner_pid: int | None
    owner_name: str | None
    lease_expires_at_ms: int | None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One registered connection: its session id, process, name, and leases it holds."""

    id: int
    pid: int
    name: str | None
    process_start: str
    heartbeat_at_ms: int
    leases: int


_QUEUES = """
SELECT q.name,
       (SELECT count(*) FROM mq_entries e WHERE e.queue_id = q.id AND e.lease_token IS NULL),
       (SELECT count(*) FROM mq_entries e WHERE e.queue_id = q.id
            AND e.lease_token IS NOT NULL),
       (SELECT count(*) FROM mq_consumers c WHERE c.queue_id = q.id),
       q.durable, q.exclusive_owner IS NOT NULL, q.auto_delete
FROM mq_queues q ORDER BY q.name
"""

_MESSAGES = """
SELECT e.id, coalesce(e.body, m.body), coalesce(e.exchange, m.exchange),
       coalesce(e.routing_key, m.routing_key), e.priority, e.delivery_count,
       e.lease_token IS NOT NULL, e.lease_owner, s.pid, s.name, e.lease_expires_at_ms
FROM mq_queues q
JOIN mq_entries e ON e.queue_id = q.id
LEFT JOIN mq_messages m ON m.id = e.message_id
LEFT JOIN mq_sessions s ON s.id = e.lease_owner
WHERE q.name = :queue
ORDER BY e.priority DESC, e.id
"""

_SESSIONS = """
SELECT s.id, s.pid, s.name, s.process_start, s.heartbeat_at_ms,
       (SELECT count(*) FROM mq_entries e WHERE e.lease_owner = s.id
            AND e.lease_token IS NOT NULL)
FROM mq_sessions s ORDER BY s.id
"""

_MARK_CRASHED = "UPDATE mq_sessions SET process_start = ? WHERE id = ?"


class Broker:
    """A broker file for tests: connections on it, a look inside it, and time and crash
    control. The ``mqstore_broker`` fixture makes one per test.

    Args:
        path: the SQLite file (created by the first connection).
        clock: the clock every connection of this broker reads; None for the real one
            (then :meth:`advance` is unavailable).
        disk_free_limit: passed to the connections (see ``ConnectionParameters``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: ManualClock | None = None,
        disk_free_limit: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.clock = clock
        self.disk_free_limit = disk_free_limit
        self._opened: list[BlockingConnection] = []

    # --- connections ------------------------------------------------------------------------

    def parameters(self, **params: Any) -> ConnectionParameters:
        """``ConnectionParameters`` for this broker (its path and clock); ``params`` as
        ConnectionParameters' own. Hand these to the code under test."""
        from .blocking import ConnectionParameters

        params.setdefault("path", self.path)
        params.setdefault("clock", self.clock)
        if self.disk_free_limit is not None:
            params.setdefault("disk_free_limit", self.disk_free_limit)
        return ConnectionParameters(**params)

    def connect(self, **params: Any) -> BlockingConnection:
        """A new ``BlockingConnection`` to this broker, closed by :meth:`close` (the fixture
        closes it at teardown) unless it was closed or crashed before."""
        from .blocking import BlockingConnection

        connection = BlockingConnection(self.parameters(**params))
        self._opened.append(connection)
        return connection

    async def aio_connect(self, **params: Any) -> AsyncConnection:
        """A new asyncio connection to this broker; close it in the test (``async with``)."""
        from .aio import AsyncConnection

        connection = AsyncConnection(self.parameters(**params))
        await connection._open()
        return connection

    def close(self) -> None:
        """Close every connection :meth:`connect` opened that is still open."""
        opened, self._opened = self._opened, []
        for connection in reversed(opened):
            connection.close()

    # --- time and upkeep --------------------------------------------------------------------

    def tick(self) -> None:
        """Run one round of upkeep now, as the engine's upkeep thread does twice a second:
        renew the leases of this process's live connections, make leases past their
        deadline ready again (flagged redelivered), reclaim sessions of dead processes."""
        self._with_engine(lambda eng: eng.upkeep())

    def advance(self, ms: int) -> None:
        """Move the broker's clock forward by ``ms`` and run upkeep (:meth:`tick`).

        Raises:
            TypeError: the broker runs on the real clock.
        """
        if not isinstance(self.clock, ManualClock):
            raise TypeError("Broker.advance needs a broker built with clock=ManualClock()")
        advance(self.clock, ms, broker=self)

    def recover(self) -> list[int]:
        """Let recovery happen after :func:`simulate_crash`: mark the session of every
        crashed connection of this process dead (see :data:`CRASHED`), then run mqstore's
        reaper as a process opening the file after a crash does. The crashed connections'
        leases are ready again (redelivered), their consumers and exclusive queues gone.

        Returns:
            The session ids reclaimed.
        """
        from . import engine

        real = os.path.realpath(self.path)
        # A crashed connection's session names this process but no engine here renews it.
        live: set[int] = set()
        with engine._registry._lock:
            for (path, _), eng in engine._registry._engines.items():
                if path == real:
                    live.update(eng._sessions)

        def reclaim(eng: engine.Engine) -> list[int]:
            def mark_and_reap(tx: Any) -> list[int]:
                rows = tx.conn.execute(
                    "SELECT id FROM mq_sessions WHERE pid = ?", (os.getpid(),)
                ).fetchall()
                crashed = [sid for (sid,) in rows if sid not in live]
                for sid in crashed:
                    tx.conn.execute(_MARK_CRASHED, (CRASHED, sid))
                eng._reap(tx)
                return crashed

            return list(eng.run(mark_and_reap))

        return list(self._with_engine(reclaim))

    def _with_engine(self, fn: Any) -> Any:
        """Run ``fn(engine)`` on this process's engine for the file and the broker's clock
        (opened for the call when no connection holds one)."""
        from . import engine, wal

        limit = (
            wal.DEFAULT_DISK_FREE_LIMIT if self.disk_free_limit is None else self.disk_free_limit
        )
        eng = engine.acquire(self.path, self.clock, limit)
        try:
            return fn(eng)
        finally:
            engine.release(eng)

    # --- inspection -------------------------------------------------------------------------

    def _query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if not os.path.exists(self.path):
            return []
        uri = Path(self.path).resolve().as_uri() + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # not an mqstore file yet
            raise
        finally:
            conn.close()

    def queues(self) -> list[QueueInfo]:
        """Every queue, by name, with its ready, leased and consumer counts."""
        return [
            QueueInfo(name, ready, leased, consumers, bool(d), bool(x), bool(a))
            for name, ready, leased, consumers, d, x, a in self._query(_QUEUES)
        ]

    def queue(self, name: str) -> QueueInfo:
        """One queue's :class:`QueueInfo`.

        Raises:
            KeyError: no such queue.
        """
        for info in self.queues():
            if info.name == name:
                return info
        raise KeyError(name)

    def messages(self, queue: str) -> list[MessageInfo]:
        """The messages of ``queue`` in delivery order, ready and leased alike.

        Raises:
            KeyError: no such queue.
        """
        rows = self._query(_MESSAGES, {"queue": queue})
        if not rows and not any(q.name == queue for q in self.queues()):
            raise KeyError(queue)
        result = []
        for entry, body, exchange, key, prio, count, leased, owner, pid, name, exp in rows:
            result.append(
                MessageInfo(
                    entry_id=entry,
                    body=bytes(body),
                    exchange=exchange,
                    routing_key=key,
                    priority=prio,
                    state="leased" if leased else "ready",
                    delivery_count=count,
                    redelivered=count > 1 if leased else count > 0,
                    lease_owner=owner if leased else None,
                    owner_pid=pid if leased else None,
                    owner_name=name if leased else None,
                    lease_expires_at_ms=exp if leased else None,
                )
            )
        return result

    def sessions(self) -> list[SessionInfo]:
        """Every registered connection (of any process), with the leases it holds."""
        return [SessionInfo(*row) for row in self._query(_SESSIONS)]

    def counters(self) -> dict[str, int]:
        """The broker's counters (``unroutable``: messages no queue took, ...)."""
        return dict(self._query("SELECT name, value FROM mq_counters"))


def simulate_crash(connection: Any) -> None:
    """Drop ``connection`` as SIGKILL would: its process-local state goes, nothing is cleaned
    up in the file. Its leases, consumers and exclusive queues stay exactly as they are; its
    session is no longer renewed, so its leases expire at their deadline unless
    :meth:`Broker.recover` reclaims them first. The connection is closed afterwards (using
    it raises ``ConnectionWrongStateError``/``ChannelWrongStateError``; ``close()`` does
    nothing). Works for ``BlockingConnection`` and, called on the event loop's thread, for
    ``mqstore.aio`` connections (their consumer iterators end).

    Raises:
        ConnectionWrongStateError: the connection is already closed.
        TypeError: not an mqstore connection.
    """
    from . import aio, blocking, engine, errors

    if not isinstance(connection, blocking.BlockingConnection | aio.AsyncConnection):
        raise TypeError(f"not an mqstore connection: {connection!r}")
    eng = connection._engine
    if connection._closed or eng is None:
        raise errors.ConnectionWrongStateError("the connection is already closed")
    reason = errors.ChannelClosedByBroker("CONNECTION_FORCED - simulated crash", 320)
    # No renewal from now on: the leases run out at their deadline, as a dead process's.
    eng._sessions.pop(connection._session, None)
    if isinstance(connection, blocking.BlockingConnection):
        connection._unwatch()
        for channel in connection._channels.values():
            channel._buffer.clear()
            channel._pending.clear()
            channel._state.is_open = False
            channel._state.close_reason = reason
    else:
        for channel in connection._channels.values():
            channel._stop_dispatcher()
            channel._state.is_open = False
            channel._state.close_reason = reason
            for buffer in channel._buffers.values():
                while not buffer.empty():
                    buffer.get_nowait()
                buffer.put_nowait(aio._END)
    connection._channels.clear()
    connection._closed = True
    engine.release(eng)


if pytest is not None:

    @pytest.fixture
    def mqstore_clock() -> ManualClock:
        """A :class:`ManualClock` for this test (``mqstore_broker`` uses it)."""
        return ManualClock()

    @pytest.fixture
    def mqstore_broker(tmp_path: Path, mqstore_clock: ManualClock) -> Iterator[Broker]:
        """A :class:`Broker` on ``tmp_path / "broker.db"`` driven by ``mqstore_clock``;
        the connections it opened are closed at teardown."""
        broker = Broker(tmp_path / "broker.db", clock=mqstore_clock)
        yield broker
        broker.close()
