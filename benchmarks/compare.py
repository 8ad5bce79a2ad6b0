#!/usr/bin/env python3
"""mqstore next to the embedded queues users would pick instead, on one file system, in one run.

    .venv/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/compare.py [--quick] [--runs 3] [--dir DIR] [--only W1,W5]
                                            [--peers mqstore,raw-sqlite3]

Peers (each skipped with a printed reason when it cannot be imported or reached):

- ``mqstore``: the blocking API (``BlockingConnection``, durability "full"), plus asyncio rows
  where they are the natural form (W2, W6).
- ``raw sqlite3``: the physical reference. W1: one INSERT + COMMIT per message (WAL,
  synchronous=FULL); W3: ``executemany`` batches of 100 in one transaction; consuming: a minimal
  claim-then-delete queue (``UPDATE .. SET claimed=1 .. RETURNING`` + commit to claim, ``DELETE``
  + commit to ack, both FULL).
- ``persist-queue``: ``SQLiteAckQueue`` (WAL; synchronous set to FULL explicitly on both of its
  connections; ``get_nowait(raw=True)`` + ``ack(id=)``; its ``get(block=True)`` waits on an
  in-process Event with a 10 s tick, useless across processes, so consumers poll every 1 ms).
- ``litequeue``: ``LiteQueue`` (it sets synchronous=NORMAL itself; set back to FULL after
  construction; ``pop()`` + ``done()``; W3 in ``q.transaction()``; bodies base64 text, as its
  data column is TEXT; consumers poll every 1 ms).
- ``huey``: ``SqliteHuey(fsync=True)`` (WAL, synchronous=FULL). Enqueue = calling a task;
  consume = ``huey.execute(huey.dequeue())``, the per-task path of huey's worker, driven by
  the benchmark's own loop instead of a ``huey_consumer`` process (whose 0.1 s-and-up polling
  backoff would measure only its sleep). Dequeue deletes the task (at-most-once, no ack).
- ``kombu``: ``sqla+sqlite:///`` transport, ``SimpleQueue`` ``put``/``get``/``ack``
  (SQLAlchemy's default rollback journal; synchronous=FULL set on every connection;
  polling_interval 1 ms).
- ``RabbitMQ``: pika with publisher confirms and persistent messages on a durable queue, only
  when a server answers on 127.0.0.1:5672.

Workloads (issue 6), bodies of 256 random bytes (the first 16 bytes carry an index and a send
time, the rest is random):

- W1 durable publish, one producer, each message durable before the next.
- W2 consume and ack N pre-published messages, one consumer (prefetch 100 where there is one).
- W3 publish in batches of 100 in one transaction where the peer has a batch/transaction API
  (mqstore: ``basic_publish_batch`` of 100 bodies, one commit; also shown: 100
  ``basic_publish`` calls in one ``with channel.transaction()``).
- W4 four worker processes drain N pre-published messages; every processed index is reported
  back, duplicates and losses counted (exactly-once check).
- W5 a consumer in another process waits; 500 messages are published 2 ms apart (``--quick``:
  50); latency from just before the publish call to the consumer's callback, p50 and p99
  (also from the publish call's return, i.e. from the commit, and the publish call's time);
  plus the waiting consumer's CPU while idle (all its threads, from /proc/PID/task/*/schedstat,
  over a 2 s idle window before the first publish).
- W6 64 concurrent publishers in one process, durable (mqstore: 64 asyncio tasks, and 64
  threads with a BlockingConnection each; RabbitMQ: 64 threads with a connection each; the
  SQLite peers: 64 threads sharing one handle behind a lock, since with a connection per
  thread they spend their time in SQLite's busy-handler sleeps, about 30 msgs/s).

Each figure is the median of ``--runs`` runs (default 3; min and max shown), each in a fresh
directory; N is calibrated per case from a probe run (which doubles as the warm-up) so a run
lasts about a second. ``--quick`` is a smoke test (< 2 min): one run of a small fixed N per
case, W5 with 50 messages and a 0.5 s idle window; its figures mean little. Every peer is
reported as a ratio to mqstore's row of the same workload measured in this run. Writes
``benchmarks/results/latest.md`` and the chart ``benchmarks/results/latest.png`` and records
the machine. The databases go to a temporary directory under ``benchmarks/results/`` (the
repository's disk, not a tmpfs) unless ``--dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import glob
import logging
import multiprocessing
import os
import shutil
import socket
import sqlite3
import statistics
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import aio_drain, filesystem, fmt_rate, machine

import mqstore

# mqstore logs one warning per process about this SQLite's WAL-reset bug; with 4 workers per
# run it floods the output. The report records the SQLite version instead.
logging.getLogger("mqstore.wal").setLevel(logging.ERROR)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BODY_SIZE = 256
QUEUE = "bench"
BATCH = 100
PREFETCH = 100
WORKERS = 4
CONCURRENCY = 64
POLL_S = 0.001  # peers without a cross-process wake-up poll this often
W5_INTERVAL_S = 0.002
_RANDOM = os.urandom(BODY_SIZE * 64)


def make_body(i: int, sent: float = 0.0) -> bytes:
    """256 bytes: index (8), send time (8), random (240; a different slice per index)."""
    start = (i * 7) % (len(_RANDOM) - BODY_SIZE)
    return struct.pack("<qd", i, sent) + _RANDOM[start : start + BODY_SIZE - 16]


def body_index(body: bytes) -> int:
    return int(struct.unpack_from("<q", body)[0])


def body_sent(body: bytes) -> float:
    return float(struct.unpack_from("<d", body, 8)[0])


# --- peers -----------------------------------------------------------------------------------


class Handle:
    """One connection to a peer's queue in one thread/process."""

    def put(self, body: bytes) -> None:
        raise NotImplementedError

    def put_batch(self, bodies: list[bytes]) -> None:
        raise NotImplementedError

    def prefill(self, bodies: list[bytes]) -> None:
        """Untimed: make the messages ready as fast as the peer allows."""
        try:
            for k in range(0, len(bodies), 1000):
                self.put_batch(bodies[k : k + 1000])
        except NotImplementedError:
            for b in bodies:
                self.put(b)

    def get(self) -> tuple[bytes, Any] | None:
        """Non-blocking: (body, ack token) or None when nothing is ready."""
        raise NotImplementedError

    def ack(self, token: Any) -> None:
        raise NotImplementedError

    def consume(self, on_body: Callable[[bytes], None], n: int | None, idle_s: float) -> int:
        """Process (then ack) messages until ``n`` were seen or none came for ``idle_s``.
        Default: poll ``get`` every POLL_S."""
        count = 0
        last = time.monotonic()
        while n is None or count < n:
            item = self.get()
            if item is None:
                if time.monotonic() - last > idle_s:
                    break
                time.sleep(POLL_S)
                continue
            body, token = item
            on_body(body)
            self.ack(token)
            count += 1
            last = time.monotonic()
        return count

    def close(self) -> None:
        pass


class Peer:
    name = "?"
    settings = ""
    batch = True  # has a batch/transaction API (W3)
    w6_shared = True  # W6: threads share one handle behind a lock (no connection per thread)

    def unavailable(self) -> str | None:
        return None

    def open(self, workdir: str) -> Handle:
        raise NotImplementedError

    def cleanup(self, workdir: str) -> None:
        """After a run: remove what lives outside ``workdir``."""


# mqstore, blocking


class MqstoreHandle(Handle):
    def __init__(self, path: str, durability: str = "full") -> None:
        self.conn = mqstore.BlockingConnection(
            mqstore.ConnectionParameters(path=path, durability=durability)
        )
        self.channel = self.conn.channel()
        self.channel.queue_declare(QUEUE, durable=True)

    def put(self, body: bytes) -> None:
        self.channel.basic_publish("", QUEUE, body)

    def put_batch(self, bodies: list[bytes]) -> None:
        self.channel.basic_publish_batch("", QUEUE, bodies)  # one transaction, one fsync

    def put_transaction(self, bodies: list[bytes]) -> None:
        with self.channel.transaction():  # one store transaction, one fsync
            for body in bodies:
                self.channel.basic_publish("", QUEUE, body)

    def prefill(self, bodies: list[bytes]) -> None:
        asyncio.run(_aio_prefill(self.conn.params.path, bodies))

    def consume(self, on_body: Callable[[bytes], None], n: int | None, idle_s: float) -> int:
        ch = self.channel
        ch.basic_qos(prefetch_count=PREFETCH)
        count = 0
        for method, _props, body in ch.consume(QUEUE, inactivity_timeout=idle_s):
            if method is None:
                break
            on_body(body)
            ch.basic_ack(method.delivery_tag)
            count += 1
            if n is not None and count >= n:
                break
        ch.cancel()
        return count

    def close(self) -> None:
        self.conn.close()


async def _aio_prefill(path: str, bodies: list[bytes]) -> None:
    conn = await mqstore.aio.connect(path, durability="normal")
    try:
        channels = [await conn.channel() for _ in range(CONCURRENCY)]
        await channels[0].queue_declare(QUEUE, durable=True)

        async def pub(ch: Any, k: int) -> None:
            for i in range(k, len(bodies), CONCURRENCY):
                await ch.basic_publish("", QUEUE, bodies[i])

        await asyncio.gather(*(pub(ch, k) for k, ch in enumerate(channels)))
    finally:
        await conn.close()


class Mqstore(Peer):
    name = "mqstore"
    w6_shared = False
    settings = (
        'durability="full" (publishes: synchronous=FULL; lease/ack batches: NORMAL, by design); '
        "WAL; prefetch 100; acks of fresh leases ride the next group commit"
    )

    def open(self, workdir: str) -> Handle:
        return MqstoreHandle(os.path.join(workdir, "mq.db"))


# raw sqlite3


class RawHandle(Handle):
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        for _ in range(100):
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                time.sleep(0.01)
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, claimed INTEGER NOT NULL "
            "DEFAULT 0, body BLOB NOT NULL)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS q_ready ON q (id) WHERE claimed = 0")

    def put(self, body: bytes) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO q (body) VALUES (?)", (body,))
        self.db.execute("COMMIT")

    def put_batch(self, bodies: list[bytes]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT INTO q (body) VALUES (?)", [(b,) for b in bodies])
        self.db.execute("COMMIT")

    def get(self) -> tuple[bytes, Any] | None:
        row = self.db.execute(
            "UPDATE q SET claimed = 1 WHERE id = (SELECT id FROM q WHERE claimed = 0 "
            "ORDER BY id LIMIT 1) RETURNING id, body"
        ).fetchone()
        return None if row is None else (row[1], row[0])

    def ack(self, token: Any) -> None:
        self.db.execute("DELETE FROM q WHERE id = ?", (token,))

    def close(self) -> None:
        self.db.close()


class RawSqlite(Peer):
    name = "raw sqlite3"
    settings = (
        "WAL, synchronous=FULL; W1 one INSERT+COMMIT per message; W3 executemany of 100 in one "
        "transaction; consume = claim (UPDATE..RETURNING, commit) then DELETE (commit)"
    )

    def open(self, workdir: str) -> Handle:
        return RawHandle(os.path.join(workdir, "raw.db"))


# persist-queue


class PersistHandle(Handle):
    def __init__(self, path: str) -> None:
        from persistqueue import SQLiteAckQueue

        self.q = SQLiteAckQueue(path, multithreading=True, timeout=30, auto_resume=False)
        for conn in {
            id(self.q._putter): self.q._putter,
            id(self.q._getter): self.q._getter,
        }.values():
            conn.execute("PRAGMA synchronous=FULL")

    def put(self, body: bytes) -> None:
        self.q.put(body)

    def put_batch(self, bodies: list[bytes]) -> None:
        raise NotImplementedError  # SQLiteAckQueue forces auto_commit

    def get(self) -> tuple[bytes, Any] | None:
        from persistqueue import Empty

        try:
            item = self.q.get(block=False, raw=True)
        except Empty:
            return None
        return item["data"], item["pqid"]

    def ack(self, token: Any) -> None:
        self.q.ack(id=token)

    def close(self) -> None:
        self.q.close()


class PersistQueue(Peer):
    name = "persist-queue"
    settings = "SQLiteAckQueue, WAL, synchronous=FULL (set explicitly), no batch API, 1 ms polling"
    batch = False

    def unavailable(self) -> str | None:
        return _missing("persistqueue")

    def open(self, workdir: str) -> Handle:
        return PersistHandle(os.path.join(workdir, "pq"))


# litequeue


class LiteHandle(Handle):
    def __init__(self, path: str) -> None:
        from litequeue import LiteQueue

        for attempt in range(100):
            try:
                self.q = LiteQueue(path, queue_name="bench", timeout=30)
                break
            except sqlite3.OperationalError:
                if attempt == 99:
                    raise
                time.sleep(0.01)
        self.q.conn.execute("PRAGMA synchronous=FULL")

    def put(self, body: bytes) -> None:
        self.q.put(base64.b64encode(body).decode("ascii"))

    def put_batch(self, bodies: list[bytes]) -> None:
        with self.q.transaction(mode="IMMEDIATE"):
            for b in bodies:
                self.q.put(base64.b64encode(b).decode("ascii"))

    def get(self) -> tuple[bytes, Any] | None:
        msg = self.q.pop()
        return None if msg is None else (base64.b64decode(msg.data), msg.message_id)

    def ack(self, token: Any) -> None:
        self.q.done(token)

    def close(self) -> None:
        self.q.close()


class LiteQueue(Peer):
    name = "litequeue"
    settings = (
        "WAL, synchronous=FULL (litequeue sets NORMAL; reset after construction), "
        "base64 bodies (TEXT column), W3 in q.transaction(), 1 ms polling"
    )

    def unavailable(self) -> str | None:
        return _missing("litequeue")

    def open(self, workdir: str) -> Handle:
        return LiteHandle(os.path.join(workdir, "lite.db"))


# huey

_HUEY_SINK: list[Callable[[bytes], None]] = []


class HueyHandle(Handle):
    def __init__(self, path: str) -> None:
        from huey import SqliteHuey

        self.huey = SqliteHuey("bench", filename=path, fsync=True, journal_mode="wal", timeout=30)

        def work(body: bytes) -> None:
            if _HUEY_SINK:
                _HUEY_SINK[-1](body)

        # Huey names a task by module: the same name in the parent (__main__) and in the
        # spawned workers (__mp_main__).
        work.__module__ = "bench"
        self.task = self.huey.task(name="bench_work")(work)

    def put(self, body: bytes) -> None:
        self.task(body)

    def put_batch(self, bodies: list[bytes]) -> None:
        raise NotImplementedError

    def consume(self, on_body: Callable[[bytes], None], n: int | None, idle_s: float) -> int:
        _HUEY_SINK.append(on_body)
        try:
            count = 0
            last = time.monotonic()
            while n is None or count < n:
                task = self.huey.dequeue()
                if task is None:
                    if time.monotonic() - last > idle_s:
                        break
                    time.sleep(POLL_S)
                    continue
                self.huey.execute(task)
                count += 1
                last = time.monotonic()
            return count
        finally:
            _HUEY_SINK.pop()

    def close(self) -> None:
        self.huey.storage.close()


class Huey(Peer):
    name = "huey"
    settings = (
        "SqliteHuey(fsync=True): WAL, synchronous=FULL; enqueue = task call; consume = "
        "huey.execute(huey.dequeue()) (the worker's per-task path, no consumer process); "
        "dequeue deletes (no ack); no batch API; 1 ms polling"
    )
    batch = False

    def unavailable(self) -> str | None:
        return _missing("huey")

    def open(self, workdir: str) -> Handle:
        return HueyHandle(os.path.join(workdir, "huey.db"))


# kombu + SQLAlchemy

_KOMBU_HOOKED = False


def _hook_sqlalchemy() -> None:
    """synchronous=FULL and a busy timeout on every SQLite connection SQLAlchemy opens."""
    global _KOMBU_HOOKED
    if _KOMBU_HOOKED:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_conn: Any, record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    _KOMBU_HOOKED = True


class KombuHandle(Handle):
    def __init__(self, path: str) -> None:
        import kombu

        _hook_sqlalchemy()
        self.conn = kombu.Connection(f"sqla+sqlite:///{path}")
        self.conn.connect()
        self.conn.transport.polling_interval = POLL_S
        self.q = self.conn.SimpleQueue(QUEUE)

    def put(self, body: bytes) -> None:
        self.q.put(body, content_type="application/octet-stream", content_encoding="binary")

    def put_batch(self, bodies: list[bytes]) -> None:
        raise NotImplementedError

    def get(self) -> tuple[bytes, Any] | None:
        try:
            msg = self.q.get_nowait()
        except self.q.Empty:
            return None
        return msg.body, msg

    def ack(self, token: Any) -> None:
        token.ack()

    def consume(self, on_body: Callable[[bytes], None], n: int | None, idle_s: float) -> int:
        count = 0
        while n is None or count < n:
            try:
                msg = self.q.get(block=True, timeout=idle_s)
            except self.q.Empty:
                break
            on_body(msg.body)
            msg.ack()
            count += 1
        return count

    def close(self) -> None:
        self.q.close()
        self.conn.release()


class Kombu(Peer):
    name = "kombu sqla"
    settings = (
        "kombu SimpleQueue over sqla+sqlite:// (SQLAlchemy), default rollback journal, "
        "synchronous=FULL, polling_interval 1 ms, no batch API"
    )
    batch = False

    def unavailable(self) -> str | None:
        return _missing("kombu") or _missing("sqlalchemy")

    def open(self, workdir: str) -> Handle:
        return KombuHandle(os.path.join(workdir, "kombu.db"))


# RabbitMQ (pika)


class PikaHandle(Handle):
    def __init__(self, workdir: str) -> None:
        import pika

        self.pika = pika
        self.conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()
        # One queue per run directory, so runs do not see each other's messages.
        self.queue = "mqstore-bench-" + os.path.basename(workdir)
        self.channel.queue_declare(self.queue, durable=True)
        self.props = pika.BasicProperties(delivery_mode=2)

    def put(self, body: bytes) -> None:
        self.channel.basic_publish("", self.queue, body, self.props)

    def put_batch(self, bodies: list[bytes]) -> None:
        # AMQP transactions (confirm mode and tx mode exclude each other: a fresh channel).
        if not hasattr(self, "tx"):
            self.tx = self.conn.channel()
            self.tx.tx_select()
        for b in bodies:
            self.tx.basic_publish("", self.queue, b, self.props)
        self.tx.tx_commit()

    def consume(self, on_body: Callable[[bytes], None], n: int | None, idle_s: float) -> int:
        ch = self.channel
        ch.basic_qos(prefetch_count=PREFETCH)
        count = 0
        for method, _props, body in ch.consume(self.queue, inactivity_timeout=idle_s):
            if method is None:
                break
            on_body(body)
            ch.basic_ack(method.delivery_tag)
            count += 1
            if n is not None and count >= n:
                break
        ch.cancel()
        return count

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class RabbitMQ(Peer):
    name = "RabbitMQ (pika)"
    w6_shared = False
    settings = "local server, durable queue, persistent messages, publisher confirms, prefetch 100"

    def unavailable(self) -> str | None:
        missing = _missing("pika")
        if missing:
            return missing
        try:
            with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
                return None
        except OSError:
            return "no server answers on 127.0.0.1:5672"

    def open(self, workdir: str) -> Handle:
        return PikaHandle(workdir)

    def cleanup(self, workdir: str) -> None:
        with contextlib.suppress(Exception):
            h = PikaHandle(workdir)
            h.channel.queue_delete(h.queue)
            h.close()


def _missing(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as exc:  # ImportError, or a broken install
        return f"cannot import {module}: {exc} (pip install -r benchmarks/requirements.txt)"
    return None


PEERS: dict[str, Peer] = {
    p.name: p for p in (Mqstore(), RawSqlite(), PersistQueue(), LiteQueue(), Huey(), Kombu())
}
PEERS["RabbitMQ (pika)"] = RabbitMQ()


# --- workloads -------------------------------------------------------------------------------


@dataclass
class Sample:
    """One run: a rate (msgs/s), or latencies (W5); plus notes such as duplicates."""

    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    idle_cpu: float = 0.0
    duplicates: int = 0
    losses: int = 0
    commit_p50_ms: float = 0.0  # W5 measured from the publish call's return (committed)
    commit_p99_ms: float = 0.0
    publish_ms: float = 0.0  # W5: median time the publish call took


def bodies(n: int) -> list[bytes]:
    return [make_body(i) for i in range(n)]


def w1(peer: Peer, workdir: str, n: int) -> Sample:
    h = peer.open(workdir)
    try:
        data = bodies(n)
        start = time.perf_counter()
        for b in data:
            h.put(b)
        return Sample(rate=n / (time.perf_counter() - start))
    finally:
        h.close()


def w2(peer: Peer, workdir: str, n: int) -> Sample:
    h = peer.open(workdir)
    try:
        h.prefill(bodies(n))
        seen = 0

        def on_body(body: bytes) -> None:
            nonlocal seen
            seen += 1

        start = time.perf_counter()
        got = h.consume(on_body, n, idle_s=5.0)
        elapsed = time.perf_counter() - start
        if got != n:
            raise RuntimeError(f"consumed {got} of {n}")
        return Sample(rate=n / elapsed)
    finally:
        h.close()


def w3(peer: Peer, workdir: str, n: int, put: str = "put_batch") -> Sample:
    h = peer.open(workdir)
    try:
        data = bodies(n)
        publish = getattr(h, put)
        start = time.perf_counter()
        for k in range(0, n, BATCH):
            publish(data[k : k + BATCH])
        return Sample(rate=n / (time.perf_counter() - start))
    finally:
        h.close()


def w3_transaction(peer: Peer, workdir: str, n: int) -> Sample:
    """mqstore's W3 through the per-message API: 100 basic_publish in one transaction."""
    return w3(peer, workdir, n, put="put_transaction")


def w6(peer: Peer, workdir: str, n: int) -> Sample:
    """64 threads. mqstore and RabbitMQ: a connection per thread. The SQLite peers share one
    handle behind a lock: with a connection per thread they spend their time in SQLite's
    busy-handler sleeps (raw sqlite3 managed ~32 msgs/s so), which measures nothing useful."""
    shared = peer.open(workdir)  # also creates the schema before the threads race for it
    lock = threading.Lock()
    if not peer.w6_shared:
        shared.close()
    data = bodies(n)
    started: list[float] = []
    ended: list[float] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(CONCURRENCY, action=lambda: started.append(time.perf_counter()))

    def publisher(k: int) -> None:
        try:
            if peer.w6_shared:
                barrier.wait()
                for i in range(k, n, CONCURRENCY):
                    with lock:
                        shared.put(data[i])
                ended.append(time.perf_counter())
                return
            handle = peer.open(workdir)
            try:
                barrier.wait()
                for i in range(k, n, CONCURRENCY):
                    handle.put(data[i])
                ended.append(time.perf_counter())
            finally:
                handle.close()
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=publisher, args=(k,)) for k in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if peer.w6_shared:
        shared.close()
    if failures:
        raise failures[0]
    return Sample(rate=n / (max(ended) - started[0]))


# mqstore asyncio variants


def w2_aio(peer: Peer, workdir: str, n: int) -> Sample:
    path = os.path.join(workdir, "mq.db")
    asyncio.run(_aio_prefill(path, bodies(n)))
    return Sample(rate=n / asyncio.run(aio_drain(path, n)))


async def _aio_w3(path: str, n: int) -> float:
    conn = await mqstore.aio.connect(path, durability="full")
    try:
        channels = [await conn.channel() for _ in range(BATCH)]
        await channels[0].queue_declare(QUEUE, durable=True)
        data = bodies(n)
        start = time.perf_counter()
        for k in range(0, n, BATCH):
            chunk = data[k : k + BATCH]
            await asyncio.gather(
                *(ch.basic_publish("", QUEUE, b) for ch, b in zip(channels, chunk, strict=False))
            )
        return time.perf_counter() - start
    finally:
        await conn.close()


def w3_aio(peer: Peer, workdir: str, n: int) -> Sample:
    return Sample(rate=n / asyncio.run(_aio_w3(os.path.join(workdir, "mq.db"), n)))


async def _aio_w6(path: str, n: int) -> float:
    conn = await mqstore.aio.connect(path, durability="full")
    try:
        channels = [await conn.channel() for _ in range(CONCURRENCY)]
        await channels[0].queue_declare(QUEUE, durable=True)
        data = bodies(n)

        async def pub(ch: Any, k: int) -> None:
            for i in range(k, n, CONCURRENCY):
                await ch.basic_publish("", QUEUE, data[i])

        start = time.perf_counter()
        await asyncio.gather(*(pub(ch, k) for k, ch in enumerate(channels)))
        return time.perf_counter() - start
    finally:
        await conn.close()


def w6_aio(peer: Peer, workdir: str, n: int) -> Sample:
    return Sample(rate=n / asyncio.run(_aio_w6(os.path.join(workdir, "mq.db"), n)))


# W4: worker processes


def _w4_worker(peer_name: str, workdir: str, go: Any, ready: Any, results: Any) -> None:
    try:
        h = PEERS[peer_name].open(workdir)
        seen: list[int] = []
        last = [0.0]

        def on_body(body: bytes) -> None:
            seen.append(body_index(body))
            last[0] = time.perf_counter()

        ready.put(os.getpid())
        go.wait()
        h.consume(on_body, None, idle_s=1.0)
        h.close()
        results.put((seen, last[0], None))
    except BaseException:
        results.put(([], 0.0, traceback.format_exc()))


def _ctx() -> Any:
    return multiprocessing.get_context("spawn")


def w4(peer: Peer, workdir: str, n: int) -> Sample:
    h = peer.open(workdir)
    try:
        h.prefill(bodies(n))
    finally:
        h.close()
    ctx = _ctx()
    go, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=_w4_worker, args=(peer.name, workdir, go, ready, results))
        for _ in range(WORKERS)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    start = time.perf_counter()
    go.set()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [e for _, _, e in outcomes if e]
    if errors:
        raise RuntimeError(errors[0])
    seen = [i for s, _, _ in outcomes for i in s]
    unique = set(seen)
    end = max(t for _, t, _ in outcomes)
    return Sample(
        rate=len(unique) / (end - start) if end > start else 0.0,
        duplicates=len(seen) - len(unique),
        losses=len(set(range(n)) - unique),
    )


# W5: cross-process latency


def _cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` in ns (schedstat: ns resolution, unlike stat)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(path).read_text().split()[0])
    return total


def _w5_consumer(peer_name: str, workdir: str, count: int, ready: Any, results: Any) -> None:
    try:
        h = PEERS[peer_name].open(workdir)
        lat: list[tuple[int, float]] = []

        def on_body(body: bytes) -> None:
            lat.append((body_index(body), time.perf_counter()))

        ready.put(os.getpid())
        h.consume(on_body, count, idle_s=60.0)
        h.close()
        results.put((lat, None))
    except BaseException:
        results.put(([], traceback.format_exc()))


def w5(peer: Peer, workdir: str, count: int, idle_s: float) -> Sample:
    publisher = peer.open(workdir)
    try:
        ctx = _ctx()
        ready, results = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(target=_w5_consumer, args=(peer.name, workdir, count, ready, results))
        proc.start()
        pid = ready.get(timeout=120)
        time.sleep(0.3)  # let the consumer reach its wait
        cpu0, t0 = _cpu_ns(pid), time.perf_counter()
        time.sleep(idle_s)
        idle = (_cpu_ns(pid) - cpu0) / 1e9 / (time.perf_counter() - t0)
        begin = time.perf_counter()
        sent: list[tuple[float, float]] = []
        for i in range(count):
            due = begin + i * W5_INTERVAL_S
            while (delay := due - time.perf_counter()) > 0:
                time.sleep(delay)
            before = time.perf_counter()
            publisher.put(make_body(i, before))
            sent.append((before, time.perf_counter()))
        received, error = results.get(timeout=120)
        proc.join(timeout=30)
        if error:
            raise RuntimeError(error)
    finally:
        publisher.close()
    ms = sorted((t - sent[i][0]) * 1000 for i, t in received)
    committed = sorted((t - sent[i][1]) * 1000 for i, t in received)
    return Sample(
        rate=len(received) / count,
        p50_ms=statistics.median(ms),
        p99_ms=_p99(ms),
        idle_cpu=idle,
        commit_p50_ms=statistics.median(committed),
        commit_p99_ms=_p99(committed),
        publish_ms=statistics.median((b - a) * 1000 for a, b in sent),
    )


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


# --- cases and measurement -------------------------------------------------------------------


@dataclass
class Case:
    workload: str
    label: str
    peer: Peer
    fn: Callable[[Peer, str, int], Sample]
    probe_n: int
    max_n: int
    reference: bool = False  # mqstore's row of this workload: others are ratios to it


@dataclass
class Result:
    case: Case
    n: int = 0
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None

    def values(self, attr: str) -> list[float]:
        return [getattr(s, attr) for s in self.samples]

    def median(self, attr: str = "rate") -> float:
        return statistics.median(self.values(attr)) if self.samples else 0.0


WORKLOADS = {
    "W1": "durable publish, one producer, each message durable before the next (msgs/s)",
    "W2": "consume + ack N pre-published messages, one consumer (msgs/s)",
    "W3": "publish in batches of 100 (msgs/s)",
    "W4": "4 worker processes drain N pre-published messages (msgs/s in total)",
    "W5": "cross-process latency, 2 ms apart: p50 / p99 ms, idle CPU of the waiting consumer",
    "W6": "64 concurrent durable publishers in one process (msgs/s)",
}


def cases(peers: list[Peer]) -> list[Case]:
    out: list[Case] = []
    for wl in WORKLOADS:
        for peer in peers:
            ref = isinstance(peer, Mqstore)
            if wl == "W1":
                out.append(Case(wl, peer.name, peer, w1, 100, 50_000, ref))
            elif wl == "W2":
                out.append(Case(wl, peer.name, peer, w2, 200, 100_000, ref))
                if ref:
                    out.append(Case(wl, "mqstore asyncio", peer, w2_aio, 200, 100_000))
            elif wl == "W3":
                if ref:
                    out.append(
                        Case(
                            wl, "mqstore (basic_publish_batch of 100)", peer, w3, 1000, 300_000, ref
                        )
                    )
                    out.append(
                        Case(
                            wl, "mqstore (transaction of 100)", peer, w3_transaction, 1000, 300_000
                        )
                    )
                elif peer.batch:
                    out.append(Case(wl, peer.name, peer, w3, 1000, 300_000))
            elif wl == "W4":
                out.append(Case(wl, peer.name, peer, w4, 400, 100_000, ref))
            elif wl == "W5":
                out.append(Case(wl, peer.name, peer, w5, 0, 0, ref))  # type: ignore[arg-type]
            elif wl == "W6":
                if ref:
                    out.append(
                        Case(wl, "mqstore asyncio (64 tasks)", peer, w6_aio, 640, 200_000, ref)
                    )
                    out.append(Case(wl, "mqstore threads", peer, w6, 640, 200_000))
                else:
                    out.append(Case(wl, peer.name, peer, w6, 640, 100_000))
    return out


def one_run(case: Case, bench_dir: Path, n: int, opts: argparse.Namespace) -> Sample:
    workdir = tempfile.mkdtemp(prefix="run-", dir=bench_dir)
    try:
        if case.workload == "W5":
            return w5(case.peer, workdir, n, opts.idle_s)
        return case.fn(case.peer, workdir, n)
    finally:
        case.peer.cleanup(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def round_n(n: float, lo: int, hi: int) -> int:
    step = CONCURRENCY * WORKERS if n >= 256 else BATCH
    return max(lo, min(hi, int(n) // step * step))


def measure(case: Case, bench_dir: Path, opts: argparse.Namespace) -> Result:
    if case.workload == "W5":
        n = opts.w5_count
    elif opts.quick:
        n = max(BATCH, case.probe_n // 2 // BATCH * BATCH)  # no calibration: a smoke test
    else:
        sample = one_run(case, bench_dir, case.probe_n, opts)  # also the warm-up
        n = round_n(sample.rate * opts.target_s, BATCH, case.max_n)
    result = Result(case, n)
    for _ in range(opts.runs):
        result.samples.append(one_run(case, bench_dir, n, opts))
    return result


# --- report ----------------------------------------------------------------------------------


def _rate_row(r: Result, ref: float | None) -> str:
    dup = ""
    if r.case.workload == "W4":
        dup = f" | {max(r.values('duplicates')):.0f} / {max(r.values('losses')):.0f}"
    ratio = f"{r.median() / ref:.2f}x" if ref else "—"
    if r.case.reference:
        ratio = "1.00x (reference)"
    return (
        f"| {r.case.label} | {r.n:,} | {fmt_rate(r.median())} | {fmt_rate(min(r.values('rate')))} "
        f"| {fmt_rate(max(r.values('rate')))} | {ratio}{dup} |"
    )


def _lat_row(r: Result, ref: Result | None) -> str:
    def span(attr: str, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
        vals = [v * scale for v in r.values(attr)]
        return (
            f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}-"
            f"{fmt.format(max(vals))})"
        )

    if r.case.reference or ref is None or not ref.samples:
        ratio = "1.00x (reference)" if r.case.reference else "—"
    else:
        ratio = f"{r.median('p50_ms') / ref.median('p50_ms'):.2f}x"
    return (
        f"| {r.case.label} | {r.n} | {span('p50_ms')} | {span('p99_ms')} "
        f"| {r.median('publish_ms'):.2f} | {r.median('commit_p50_ms'):.2f} "
        f"| {r.median('commit_p99_ms'):.2f} | {span('idle_cpu', 100, '{:.2f}')} | {ratio} |"
    )


def tables(results: list[Result]) -> str:
    parts = []
    for wl, title in WORKLOADS.items():
        rows = [r for r in results if r.case.workload == wl]
        if not rows:
            continue
        parts += [f"### {wl}: {title}", ""]
        ref = next((r for r in rows if r.case.reference and r.samples), None)
        if wl == "W5":
            parts += [
                "| Peer | msgs | p50 ms (min-max) | p99 ms (min-max) | publish call ms "
                "| p50 from publish return | p99 from publish return | idle CPU % of a core "
                "| p50 vs mqstore |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in rows:
                if r.skipped:
                    parts.append(f"| {r.case.label} | — | skipped: {r.skipped} | | | |")
                else:
                    parts.append(_lat_row(r, ref))
        else:
            extra = " dup / lost |" if wl == "W4" else ""
            parts += [
                f"| Peer | N | median | min | max | vs mqstore |{extra}",
                "|---|---:|---:|---:|---:|---:|" + ("---:|" if extra else ""),
            ]
            for r in rows:
                if r.skipped:
                    parts.append(f"| {r.case.label} | — | skipped: {r.skipped} | | | |")
                else:
                    parts.append(_rate_row(r, ref.median() if ref else None))
        parts.append("")
    return "\n".join(parts)


def targets(results: list[Result]) -> str:
    def get(wl: str, label: str) -> Result | None:
        for r in results:
            if r.case.workload == wl and r.case.label == label and r.samples:
                return r
        return None

    checks: list[tuple[str, str, bool | None]] = []

    def add(name: str, measured: str, ok: bool | None) -> None:
        checks.append((name, measured, ok))

    raw1, mq1 = get("W1", "raw sqlite3"), get("W1", "mqstore")
    if raw1 and mq1:
        ratio = mq1.median() / raw1.median()
        add("W1 >= 70% of raw sqlite3 commit/msg", f"{ratio:.0%}", ratio >= 0.70)
    for wl, label, floor in (
        ("W6", "mqstore asyncio (64 tasks)", 20_000),
        ("W3", "mqstore (basic_publish_batch of 100)", 150_000),
        ("W2", "mqstore", 20_000),
        ("W2", "mqstore asyncio", 20_000),
        ("W4", "mqstore", 15_000),
    ):
        r = get(wl, label)
        if r:
            add(f"{wl} {label} >= {floor:,}/s", fmt_rate(r.median()), r.median() >= floor)
    w4 = get("W4", "mqstore")
    if w4:
        bad = max(w4.values("duplicates")) + max(w4.values("losses"))
        add("W4 exactly once (no duplicates, no losses)", f"{bad} bad", bad == 0)
    w5 = get("W5", "mqstore")
    if w5:
        add("W5 p50 <= 1 ms", f"{w5.median('p50_ms'):.2f} ms", w5.median("p50_ms") <= 1.0)
        add("W5 p99 <= 5 ms", f"{w5.median('p99_ms'):.2f} ms", w5.median("p99_ms") <= 5.0)
        add(
            "W5 idle CPU < 1% of a core",
            f"{w5.median('idle_cpu'):.2%}",
            w5.median("idle_cpu") < 0.01,
        )
    sqlite_peers = ("raw sqlite3", "persist-queue", "litequeue", "huey", "kombu sqla")
    for wl in ("W1", "W2", "W3", "W4", "W6"):
        ref = next((r for r in results if r.case.workload == wl and r.case.reference), None)
        if not ref or not ref.samples:
            continue
        need = 3.0 if wl in ("W2", "W4") else 1.0
        for r in results:
            if r.case.workload != wl or r.case.label not in sqlite_peers or not r.samples:
                continue
            if r.case.label == "raw sqlite3" and wl in ("W1", "W3"):
                continue  # the physical reference, not a queue
            ratio = ref.median() / r.median()
            add(
                f"{wl} mqstore >= {need:.0f}x {r.case.label}",
                f"{ratio:.2f}x",
                ratio >= need,
            )
    lines = ["| Target | Measured | Pass |", "|---|---:|:---:|"]
    for name, measured, ok in checks:
        lines.append(f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |")
    return "\n".join(lines)


def chart(results: list[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = [w for w in WORKLOADS if any(r.case.workload == w and r.samples for r in results)]
    cols = min(3, len(wls))
    rows_n = (len(wls) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.2 * rows_n), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(wls) :]:
        ax.axis("off")
    for ax, wl in zip(flat, wls, strict=False):
        rows = [r for r in results if r.case.workload == wl and r.samples]
        labels = [r.case.label.replace(" (", "\n(") for r in rows]
        colors = ["tab:blue" if r.case.peer.name == "mqstore" else "tab:gray" for r in rows]
        if wl == "W5":
            med = [r.median("p50_ms") for r in rows]
            p99 = [r.median("p99_ms") for r in rows]
            ax.barh(labels, p99, color="lightgray", label="p99")
            ax.barh(labels, med, color=colors, label="p50")
            ax.set_xscale("log")
            ax.set_xlabel("latency ms (log), lower is better")
            ax.legend(loc="lower right", fontsize=7)
        else:
            med = [r.median() for r in rows]
            lo = [r.median() - min(r.values("rate")) for r in rows]
            hi = [max(r.values("rate")) - r.median() for r in rows]
            ax.barh(labels, med, xerr=[lo, hi], color=colors)
            ax.set_xscale("log")
            ax.set_xlabel("msgs/s (log), higher is better")
        ax.invert_yaxis()
        ax.set_title(f"{wl}: {WORKLOADS[wl].split(' (')[0]}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def report(
    results: list[Result], bench_dir: Path, opts: argparse.Namespace, load: tuple[str, str]
) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick (smoke test: tiny N, figures not meaningful)" if opts.quick else "full"
    lines = [
        "# mqstore vs embedded queues (issue 6)",
        "",
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}` — {when}, mode: {mode}",
        "",
        *[f"- {k}: {v}" for k, v in machine(bench_dir)],
        f"- Load average at start / end: {load[0]} / {load[1]}",
        "",
        f"Median of {opts.runs} runs (min and max shown), {BODY_SIZE}-byte bodies; every row's "
        "ratio is to the mqstore reference row of its workload in this run (W3: "
        "`basic_publish_batch` of 100 bodies; W6: asyncio tasks).",
        "",
        "## Targets",
        "",
        targets(results),
        "",
        "## Results",
        "",
        tables(results),
        "## Peer settings",
        "",
        *[f"- **{p.name}**: {p.settings}" for p in PEERS.values()],
        "",
        "Skipped peers:",
        "",
    ]
    skipped = {r.case.peer.name: r.skipped for r in results if r.skipped}
    lines += [f"- {k}: {v}" for k, v in skipped.items()] or ["- none"]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny N, a smoke test (< 2 min)")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per case (default 3; --quick: 1)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="bench dir (default: temp dir)")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W5")
    parser.add_argument("--peers", default="", help="comma-separated peer names")
    parser.add_argument("--out", default="latest", help="results/<out>.md and .png")
    opts = parser.parse_args(argv)
    if opts.runs is None:
        opts.runs = 1 if opts.quick else 3
    opts.target_s = 1.0
    opts.w5_count = 50 if opts.quick else 500
    opts.idle_s = 0.5 if opts.quick else 2.0
    RESULTS.mkdir(parents=True, exist_ok=True)
    own_dir = opts.dir is None
    bench_dir = Path(tempfile.mkdtemp(prefix="compare-", dir=RESULTS)) if own_dir else opts.dir
    bench_dir.mkdir(parents=True, exist_ok=True)
    if "tmpfs" in filesystem(bench_dir).split(" (")[0]:
        print(f"warning: {bench_dir} is on tmpfs: fsync costs nothing there", file=sys.stderr)
    load_start = loadavg()
    for k, v in machine(bench_dir):
        print(f"{k}: {v}", file=sys.stderr)
    print(f"Load average: {load_start}", file=sys.stderr)

    wanted_peers = {p.strip() for p in opts.peers.split(",") if p.strip()}
    peers = []
    skips: dict[str, str] = {}
    for peer in PEERS.values():
        if wanted_peers and peer.name not in wanted_peers:
            continue
        reason = peer.unavailable()
        if reason:
            print(f"skipping {peer.name}: {reason}", file=sys.stderr)
            skips[peer.name] = reason
        peers.append(peer)
    only = {w.strip().upper() for w in opts.only.split(",") if w.strip()}
    results: list[Result] = []
    try:
        for case in cases(peers):
            if only and case.workload not in only:
                continue
            if case.peer.name in skips:
                results.append(Result(case, skipped=skips[case.peer.name]))
                continue
            print(f"… {case.workload} {case.label}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                r = measure(case, bench_dir, opts)
            except Exception as exc:
                traceback.print_exc()
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
                results.append(Result(case, skipped=f"failed: {type(exc).__name__}: {last}"[:200]))
                continue
            results.append(r)
            if case.workload == "W5":
                got = f"p50 {r.median('p50_ms'):.2f} ms p99 {r.median('p99_ms'):.2f} ms"
                got += f" idle {r.median('idle_cpu'):.2%}"
            else:
                got = f"{fmt_rate(r.median())} msgs/s (N={r.n:,})"
                if case.workload == "W4":
                    got += f" dup {max(r.values('duplicates'))} lost {max(r.values('losses'))}"
            print(f"  {got}  [{time.perf_counter() - t0:.1f}s]", file=sys.stderr, flush=True)
    finally:
        if own_dir:
            shutil.rmtree(bench_dir, ignore_errors=True)
    text = report(results, bench_dir, opts, (load_start, loadavg()))
    md = RESULTS / f"{opts.out}.md"
    png = RESULTS / f"{opts.out}.png"
    md.write_text(text + f"\n![chart]({png.name})\n", encoding="utf-8")
    try:
        chart(results, png, f"mqstore vs peers — {'quick' if opts.quick else 'full'} run")
    except Exception as exc:
        print(f"chart failed: {exc}", file=sys.stderr)
    print(text)
    print(f"written to {md} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
