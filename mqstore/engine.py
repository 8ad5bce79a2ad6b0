"""The engine: one SQLite connection per file per process, group commit, wake-ups, upkeep.

Group commit: every operation (publish, lease, ack, declare ...) is queued; whichever caller
finds no commit in progress becomes the leader, runs every queued operation in one
BEGIN IMMEDIATE transaction and commits once (if one is refused, the batch is rolled back
and replayed with a SAVEPOINT around each operation, so the refusal undoes only its own
writes). Consecutive publishes of a batch are stored together (txn.publish_many). Concurrent
callers thus share one fsync. A lone blocking caller leads its own batch on its own thread;
other blocking callers wait on their own operation's lock, and a finishing leader hands the
role to one of them. asyncio callers hand their operations to a flush thread so the event
loop never waits on fsync.

The sequential publisher: a publish that is one statement (store.publish_alone: the default
exchange, a plain queue) and finds no commit in progress runs at once on its caller's thread
as its own autocommit transaction, with no operation object, batch or BEGIN/COMMIT round
trip (Engine._publish_lone). Its costs all fall after the previous fsync, on cold caches.

Durability: a batch that holds a publish or a declare runs with ``synchronous=FULL`` (when
the connection asked for durability "full"); batches of leases and acks run with NORMAL,
because losing one to a power cut only redelivers a message (at-least-once), never loses
one, and WAL frames are synced in order by the next FULL commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from . import errors, notify, replaced, sql, store, txn, wal
from .types import Clock, SystemClock, boot_id

log = logging.getLogger(__name__)

MIN_SQLITE = (3, 35, 0)
BUSY_TIMEOUT_MS = 10_000
UPKEEP_INTERVAL_S = 0.5
# Leases shorter than 3 * UPKEEP_INTERVAL_S shorten the interval, down to this floor.
MIN_UPKEEP_INTERVAL_S = 0.02
# Fallback for commits that send no wake-up (another host OS, the outbox pattern's own
# transactions): PRAGMA data_version is polled this often while consumers wait.
CROSS_PROCESS_POLL_S = 0.025
IDLE_POLL_S = 0.1
# At most this many extra expiry sweeps (store.EXPIRY_BATCH each) per upkeep round.
SWEEP_ROUNDS = 20
# Upkeep never waits less than this for a delayed message already due (no busy loop when
# another process promotes it, or a test's clock stands still).
DUE_FLOOR_S = 0.001


class _Op:
    __slots__ = (
        "args",
        "done",
        "error",
        "fn",
        "future",
        "kwargs",
        "loop",
        "on_done",
        "queued",
        "result",
        "sync",
        "waiter",
    )

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, sync: bool) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.sync = sync
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future[Any] | None = None
        self.on_done: Callable[[Any, BaseException | None], None] | None = None
        self.queued = False  # waiting in _pending (a posted op can still absorb others)
        # Held while a blocking caller waits for this op; released when the op is done or
        # its caller is to lead the next batch (group commit's hand-off).
        self.waiter: Any = None

    def complete(self) -> None:
        """Mark done and run ``on_done``; an awaited future is settled separately."""
        self.done = True
        if self.on_done is not None:
            self.on_done(self.result, self.error)
        if self.waiter is not None:
            self.waiter.release()

    def finish(self) -> None:
        self.complete()
        if self.future is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(_settle, self.future, self.result, self.error)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class Wake:
    """threading.Event's set/clear/wait for one waiting thread, on a bare lock: ``set``
    from another thread wakes the waiter with one futex hand-off instead of Event's two
    (its condition's lock, then the waiter's), ~20 us sooner on a virtual machine. Used by
    the engine's flush thread and by BlockingConnection's event loop."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held: not set

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # already set

    def clear(self) -> None:
        self._lock.acquire(blocking=False)

    def wait(self, timeout: float | None = None) -> bool:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        self.set()  # stays set until cleared, as an Event (a racing set() did it already)
        return True


def _chain(
    first: Callable[[Any, BaseException | None], None] | None,
    second: Callable[[Any, BaseException | None], None] | None,
) -> Callable[[Any, BaseException | None], None] | None:
    if first is None or second is None:
        return first or second

    def both(result: Any, error: BaseException | None) -> None:
        first(result, error)
        second(result, error)

    return both


def _finish_all(batch: list[_Op]) -> None:
    """Finish a committed batch: one wake-up per event loop for all its awaited operations
    (instead of one call_soon_threadsafe, and one self-pipe write, per operation)."""
    if len(batch) == 1 and batch[0].future is None:
        batch[0].complete()  # a lone blocking caller: nothing to settle on a loop
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
    for op in batch:
        op.complete()
        if op.future is not None and op.loop is not None:
            by_loop.setdefault(op.loop, []).append(op)
    for loop, ops in by_loop.items():
        loop.call_soon_threadsafe(_settle_all, ops)


def _settle_all(ops: list[_Op]) -> None:
    for op in ops:
        assert op.future is not None
        _settle(op.future, op.result, op.error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _call(tx: store.Txn, op: _Op) -> Any:
    """Run one operation; a refusal (or a bug) fails that operation only. SQLite errors
    propagate: they fail the whole batch."""
    try:
        return op.fn(tx, *op.args, **op.kwargs)
    except sqlite3.Error:
        raise
    except Exception as exc:
        op.error = exc
        return None


def _forget_listener(tx: store.Txn, name: str | None) -> None:
    if name is not None:
        tx.conn.execute(sql.DELETE_LISTENER, (name,))


def process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` since boot (tells a reused pid apart); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "unknown"
        return "unknown"
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None  # a zombie: dead, only not yet waited for by its parent
    return fields[19]


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the write lock (SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT ...)."""
    return getattr(exc, "sqlite_errorname", "").startswith("SQLITE_BUSY")


# Errors of one statement (a constraint or trigger, a value too big ...), as opposed to the
# transaction's (I/O, disk full, busy, corruption): in a group commit they fail only the
# operation that ran the statement.
_STATEMENT_ERRORS = ("SQLITE_CONSTRAINT", "SQLITE_TOOBIG", "SQLITE_MISMATCH", "SQLITE_RANGE")


def _statement_error(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "").startswith(_STATEMENT_ERRORS)


def _map_sqlite_error(exc: sqlite3.Error, path: str) -> errors.StoreError:
    name = getattr(exc, "sqlite_errorname", "")
    text = f"{path}: {exc}"
    if name.startswith("SQLITE_BUSY") or "database is locked" in str(exc):
        return errors.StoreBusyError(text)
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in str(exc):
        return errors.StoreCorruptError(text)
    if name == "SQLITE_FULL":
        return errors.StoreFullError(text + " (rolled back, not stored)")
    if name.startswith("SQLITE_READONLY"):
        # Refused before anything is written: the outcome is known.
        return errors.StoreIOError(f"{text}: {_why_read_only(path)}; nothing was written")
    if name.startswith("SQLITE_IOERR"):
        return errors.StoreIOError(text + " (outcome unknown)")
    if name.startswith("SQLITE_CANTOPEN") or "unable to open database file" in str(exc):
        return errors.StoreError(f"{text}: {_why_cannot_open(path)}")
    return errors.StoreError(text)


def _why_cannot_open(path: str) -> str:
    """SQLite says only "unable to open database file": find out why (stat, never open)."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "it is a directory, not a database file"
    if not os.path.isdir(directory):
        return f"its directory {directory} does not exist"
    if _read_only_fs(directory):
        return "its file system is mounted read-only (SQLite needs to create -wal and -shm)"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"no permission to create the -wal and -shm files in {directory}"
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return "no permission to read and write it"
    return "the file cannot be opened"


def _why_read_only(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if _read_only_fs(directory):
        return "its file system is mounted read-only"
    return "the file is read-only (permissions, or an immutable attribute: lsattr)"


def _read_only_fs(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class Engine:
    """The store of one file in one process. Use :func:`acquire` to share it."""

    def __init__(
        self,
        path: str,
        *,
        clock: Clock | None = None,
        disk_free_limit: int = wal.DEFAULT_DISK_FREE_LIMIT,
    ) -> None:
        self.path = path
        self.clock: Clock = clock or SystemClock()
        self.boot_id = boot_id()
        self._pid = os.getpid()
        wal.warn_if_wal_reset_bug()
        self._conn = self._connect(path)
        self.checkpointer = wal.Checkpointer(path)
        self.disk = wal.DiskGuard(path, disk_free_limit)
        self._identity = replaced.ReplacedCheck(path)
        self._sync_full: bool | None = None
        # Guards _pending, _leader and _coalescing. Blocking callers wait on their own op's
        # lock (no thundering herd); the condition is for the rare waits for leadership to
        # be free (checkpoint, close), counted in _idle_waiters.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._idle_waiters = 0
        self._pending: list[_Op] = []
        # Posted operations that later posts with the same key may join (acks of a channel).
        self._coalescing: dict[Any, _Op] = {}
        self._leader = False
        # Set by the upkeep thread: the leader runs the checkpoint right after its batch.
        self._checkpoint_due = False
        self._checkpoint_result: tuple[int, int, int] | None = None
        self._closed = False
        self._kick = Wake()  # the flush thread's: operations are waiting
        self._wakers: set[Callable[[], None]] = set()
        self._wakers_lock = threading.Lock()
        self._sessions: dict[int, int] = {}  # live session id -> default lease ms
        self._stop = threading.Event()
        self._upkeep_interval = UPKEEP_INTERVAL_S
        # Routing tables (topic tries) kept between transactions, keyed by exchange and
        # checked against the file's topology version; used only by the leader thread.
        self._route_cache: dict[object, object] = {}
        self._upkeep_wake = threading.Event()
        # When (wall ms) the next delayed message is due: upkeep wakes then to promote it.
        self._next_due_ms: int | None = None
        self.refs = 0
        self._watcher: threading.Thread | None = None
        self._listener: notify.WakeListener | None = None
        self._sender = notify.WakeSender() if notify.supported() else None
        self._peers: list[str] = []
        self._gone_peers: list[str] = []
        try:
            self.run(self._bootstrap)
        except BaseException:
            self._conn.close()
            self._identity.close()
            if self._sender is not None:
                self._sender.close()
            raise
        self._flusher = threading.Thread(target=self._flush_loop, name="mqstore-flush", daemon=True)
        self._flusher.start()
        self._upkeep = threading.Thread(
            target=self._upkeep_loop, name="mqstore-upkeep", daemon=True
        )
        self._upkeep.start()

    # --- opening --------------------------------------------------------------------------

    def _connect(self, path: str) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise errors.StoreError(
                "mqstore needs SQLite >= 3.35 (RETURNING); this Python has "
                + sqlite3.sqlite_version
            )
        try:
            new_file = not os.path.exists(path) or os.path.getsize(path) == 0
        except OSError:
            new_file = False
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise _map_sqlite_error(exc, path) from exc
        try:
            _set_pragmas(conn, new_file=new_file)
            problems = _quick_check(conn, path)
            if problems != ["ok"]:
                raise errors.StoreCorruptError(
                    f"{path}: database disk image is malformed (quick_check: {problems[0]!r}); "
                    "restore it from a backup"
                )
            from . import migrate

            if migrate.current_revision(conn) != migrate.HEAD:
                migrate.migrate(path)
            # From here Engine._begin retries BUSY itself, in finer steps than SQLite's busy
            # handler (opening above keeps the handler: journal_mode and migration wait).
            conn.execute("PRAGMA busy_timeout=0")
        except BaseException as exc:
            conn.close()  # a refused file keeps no handle (and no POSIX lock) open
            if isinstance(exc, sqlite3.Error):
                raise _map_sqlite_error(exc, path) from exc
            raise
        return conn

    def _bootstrap(self, tx: store.Txn) -> None:
        store.ensure_system_exchanges(tx)
        self._refresh_peers(tx)
        if store.get_meta(tx, "boot_id") != self.boot_id:
            # The host rebooted since the last lease: every holder is dead, every lease void.
            store.void_all_leases(tx)
            for session_id, *_ in store.sessions(tx):
                store.close_session(tx, session_id)
            store.set_meta(tx, "boot_id", self.boot_id)
        self._reap(tx)

    # --- group commit ---------------------------------------------------------------------

    def run(self, fn: Callable[..., Any], *args: Any, sync: bool = False, **kwargs: Any) -> Any:
        """Run ``fn(tx, *args, **kwargs)`` in a write transaction and return its result once
        committed (``sync=True``: and fsynced)."""
        self._check_usable()
        if fn is store.publish:
            stored = self._publish_lone(args, kwargs, sync)
            if stored:
                return stored
        op = _Op(fn, args, kwargs, sync)
        with self._lock:
            self._pending.append(op)
            lead = not self._leader
            if lead:
                self._leader = True
            else:
                op.waiter = threading.Lock()
                op.waiter.acquire()
        if not lead:
            op.waiter.acquire()  # released by the leader: op done, or ours to lead
            if op.done:
                return op.outcome()
        self._lead(until=op)
        return op.outcome()

    def _publish_lone(self, args: tuple, kwargs: dict[str, Any], sync: bool) -> int:
        """A publish whose caller finds no commit in progress, when it is one statement
        (store.publish_alone): run now on the caller's thread as its own transaction,
        without an operation object, a batch or a hand-off. This is a sequential durable
        publisher's path, where every step after the previous fsync runs on cold caches
        and costs two to three times its warm time. Returns 0 when it did not run (a commit
        is in progress or due, or the publish needs routing): run() then takes it."""
        with self._lock:
            if self._leader or self._pending or self._checkpoint_due:
                return 0
            self._leader = True
        try:
            try:
                self._prepare(sync)
                stored = self._retry_busy(store.publish_alone, self._txn(), *args, **kwargs)
            except sqlite3.Error as exc:
                raise _map_sqlite_error(exc, self.path) from None
            if stored:
                self.notify()
                self.checkpointer.follow_writes(self._conn, wrote=True, now=time.monotonic())
            return stored
        finally:
            with self._lock:
                self._pass_lead()

    def _prepare(self, sync: bool) -> None:
        """Before a commit: refuse a durable one into a replaced file, and set the
        connection's synchronous level."""
        if sync:
            self._check_replaced()
        if sync != self._sync_full:
            self._conn.execute("PRAGMA synchronous=FULL" if sync else "PRAGMA synchronous=NORMAL")
            self._sync_full = sync

    def _txn(self) -> store.Txn:
        """A transaction's context, with the time read once."""
        return store.Txn(
            self._conn,
            self.clock.now_ms(),
            self.clock.wall_ms(),
            self._route_cache,
            self.disk.low(),
        )

    def run_async(
        self, fn: Callable[..., Any], *args: Any, sync: bool = False, **kwargs: Any
    ) -> asyncio.Future[Any]:
        """As :meth:`run`, for the running event loop: returns a future to await (not a
        coroutine: one frame less per operation); the commit happens on the flush thread."""
        self._check_usable()
        op = _Op(fn, args, kwargs, sync)
        loop = asyncio.get_running_loop()
        op.loop = loop
        op.future = future = loop.create_future()
        with self._lock:
            self._pending.append(op)
            if not self._leader:
                self._kick.set()
        return future

    def post(self, call: Any) -> None:
        """Queue ``call`` (a state.Call) for the next group commit without waiting; its
        ``on_done(result, error)`` runs once it was committed. Operations from one thread
        still run in the order they were queued."""
        self._check_usable()
        key = getattr(call, "coalesce", None)
        with self._lock:
            if key is not None:
                queued = self._coalescing.get(key)
                if queued is not None and queued.queued:
                    # Not taken by a leader yet: add to it (one statement list, one op).
                    queued.args[0].extend(call.args[0])
                    queued.on_done = _chain(queued.on_done, call.on_done)
                    return
            op = _Op(
                call.fn,
                (list(call.args[0]), *call.args[1:]) if key else tuple(call.args),
                dict(call.kwargs),
                call.sync,
            )
            op.on_done = call.on_done
            op.queued = True
            self._pending.append(op)
            if key is not None:
                self._coalescing[key] = op
            if not self._leader:
                self._kick.set()

    def _lead(self, until: _Op | None) -> None:
        """Commit batches until ``until`` is done (or, for the flush thread, until idle),
        then hand the leader role on to a caller still waiting, if any."""
        try:
            while True:
                with self._lock:
                    batch, self._pending = self._pending, []
                    for taken in batch:
                        taken.queued = False
                    self._coalescing.clear()
                if batch:
                    self._execute(batch)
                if self._checkpoint_due:
                    self._run_due_checkpoint()
                with self._lock:
                    if not self._pending or (until is not None and until.done):
                        self._pass_lead()
                        return
        except BaseException:
            with self._lock:
                self._pass_lead()
            raise

    def _pass_lead(self) -> None:
        """Give up the leader role (holding ``_lock``): to the first blocking caller still
        waiting, whose op then leads the next batch, else to the flush thread for posted
        and awaited ops, else to nobody."""
        for op in self._pending:
            if op.waiter is not None:
                op.waiter.release()  # _leader stays True: it is that caller's now
                return
        self._leader = False
        if self._pending:
            self._kick.set()
        if self._idle_waiters:
            self._cond.notify_all()

    def _wait_while(self, busy: Callable[[], bool]) -> None:
        """Holding ``_lock`` (``_cond``'s lock): wait until ``busy()`` is false; woken
        whenever the leader role is given up or a due checkpoint ran."""
        self._idle_waiters += 1
        try:
            while busy():
                self._cond.wait()
        finally:
            self._idle_waiters -= 1

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._kick.wait()
            self._kick.clear()
            if self._stop.is_set():
                return
            with self._lock:
                if self._leader or not self._pending:
                    continue  # the leader passes the pending ops on when it is done
                self._leader = True
            self._lead(until=None)

    @staticmethod
    def _run_all(tx: store.Txn, batch: list[_Op]) -> bool:
        """Run every operation; False (stopping early) as soon as one is refused.
        Consecutive publishes run as one ``txn.publish_many`` (their inline entries in one
        statement); if that raises, the batch is replayed one operation at a time, which
        tells which publish was refused."""
        i, n = 0, len(batch)
        while i < n:
            j = i
            while j < n and batch[j].fn is store.publish:
                j += 1
            if j - i > 1:
                group = batch[i:j]
                try:
                    results = txn.publish_many(tx, [(op.args, op.kwargs) for op in group])
                except sqlite3.Error:
                    raise
                except Exception:
                    return False
                for op, result in zip(group, results, strict=True):
                    op.result = result
                i = j
                continue
            op = batch[i]
            op.result = _call(tx, op)
            if op.error is not None:
                return False
            i += 1
        return True

    def _begin(self) -> None:
        self._retry_busy(self._conn.execute, "BEGIN IMMEDIATE")

    @staticmethod
    def _retry_busy(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` (which takes the write lock: BEGIN IMMEDIATE, or a statement run
        as its own transaction), retried while another process holds the write lock.

        SQLite's own busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries, which turns
        a brief contention into tens of milliseconds of latency; this retries after 50 us,
        doubling up to 2 ms, within the same overall bound."""
        delay = 0.00005
        deadline = None
        while True:
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + BUSY_TIMEOUT_MS / 1000
                elif now >= deadline:
                    raise
                _PAUSE.wait(delay)  # not time.sleep: libfaketime breaks it (EINVAL)
                delay = min(delay * 2, 0.002)

    def _run_alone(self, tx: store.Txn, op: _Op) -> bool:
        """Run a lone publish that is one statement (store.publish_alone) as its own
        transaction: SQLite commits it when the statement ends, so no BEGIN and COMMIT
        statements are run. False (nothing written): it needs a transaction."""
        if op.fn is not store.publish:
            return False
        try:
            stored = self._retry_busy(store.publish_alone, tx, *op.args, **op.kwargs)
        except sqlite3.Error:
            raise
        except Exception as exc:  # refused before writing (low disk)
            op.error = exc
            return True
        if not stored:
            return False
        op.result = stored
        return True

    def _execute(self, batch: list[_Op]) -> None:
        """Run ``batch`` in one transaction: one commit (and fsync) for all of it."""
        conn = self._conn
        sync_full = batch[0].sync if len(batch) == 1 else any(op.sync for op in batch)
        tx = self._txn()
        try:
            self._prepare(sync_full)
            if len(batch) > 1:
                tx = self._run_batch(tx, batch)
            elif not self._run_alone(tx, batch[0]):
                # A lone operation that fails is rolled back whole.
                self._begin()
                op = batch[0]
                op.result = _call(tx, op)
                conn.execute("ROLLBACK" if op.error is not None else "COMMIT")
        except errors.StoreReplacedError as exc:
            for op in batch:
                op.error = exc
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            mapped = _map_sqlite_error(exc, self.path)
            for op in batch:
                op.error = mapped
                op.result = None
            tx.touched.clear()
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for op in batch:
                op.error = exc
                op.finish()
            raise
        _finish_all(batch)
        if tx.touched or tx.queues_deleted:
            self.notify()
        if tx.shortest_lease_ms is not None:
            self._lease_taken(tx.shortest_lease_ms)
        if tx.scheduled_ms is not None:
            self._scheduled(tx.scheduled_ms)
        # This process writes: take the checkpointer role if it is free (it follows writes).
        self.checkpointer.follow_writes(conn, wrote=True, now=time.monotonic())

    def _run_batch(self, tx: store.Txn, batch: list[_Op]) -> store.Txn:
        """Run several operations in one transaction and commit; returns the Txn that
        committed (a new one when the batch was replayed)."""
        conn = self._conn
        self._begin()
        try:
            done = self._run_all(tx, batch)
        except sqlite3.Error as exc:
            if not _statement_error(exc):
                raise  # the transaction itself failed (I/O, disk full ...): all of it fails
            done = False
        if done:
            conn.execute("COMMIT")
            return tx
        # One operation was refused, or one statement failed: undo the batch and replay it
        # with a savepoint around each operation, so that one undoes only its own writes
        # and fails alone.
        conn.execute("ROLLBACK")
        tx = store.Txn(conn, tx.now_ms, tx.wall_ms, self._route_cache, tx.low_disk)
        self._begin()
        for op in batch:
            op.error = None
            conn.execute("SAVEPOINT op")
            try:
                op.result = _call(tx, op)
            except sqlite3.Error as exc:
                if not _statement_error(exc):
                    raise
                op.error, op.result = _map_sqlite_error(exc, self.path), None
            if op.error is not None:
                conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
        conn.execute("COMMIT")
        return tx

    def _check_usable(self) -> None:
        if _forks and os.getpid() != self._pid:
            raise errors.UsedAfterForkError(
                f"{self.path}: this mqstore connection was opened in process {self._pid} and "
                "cannot be used after fork(); open a new one in the child"
            )
        if self._closed:
            raise errors.ConnectionWrongStateError("the store is closed")

    def _check_replaced(self) -> None:
        if self._identity.check():
            raise errors.StoreReplacedError(
                f"{self.path}: the database file was deleted or replaced while open; "
                "writes stop here so they are not lost in an orphaned file"
            )

    # --- wake-ups -------------------------------------------------------------------------

    def add_waker(self, waker: Callable[[], None]) -> None:
        """Call ``waker`` (from any thread) whenever messages may have become deliverable."""
        with self._wakers_lock:
            self._wakers.add(waker)
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch_loop, name="mqstore-watch", daemon=True
                )
                self._watcher.start()
            start_listening = self._listener is None and notify.supported()
            if start_listening:
                self._listener = notify.WakeListener(self._notify_local)
        if start_listening:
            self.run(self._register_listener)

    def remove_waker(self, waker: Callable[[], None]) -> None:
        with self._wakers_lock:
            self._wakers.discard(waker)

    def notify(self) -> None:
        """Wake this process's waiting consumers and every other listening process."""
        self._notify_local()
        if self._sender is not None and self._peers:
            gone = self._sender.send(self._peers)
            if gone:
                self._peers = [p for p in self._peers if p not in gone]
                self._gone_peers.extend(gone)

    def _notify_local(self) -> None:
        if not self._wakers:
            return  # nobody waits (a waker added now checks for messages itself)
        with self._wakers_lock:
            wakers = list(self._wakers)
        for waker in wakers:
            waker()

    def _register_listener(self, tx: store.Txn) -> None:
        if self._listener is not None:
            tx.conn.execute(sql.INSERT_LISTENER, (self._listener.name, os.getpid(), tx.wall_ms))
        self._refresh_peers(tx)

    def _refresh_peers(self, tx: store.Txn) -> None:
        """Learn which processes listen for wake-ups; forget those that vanished."""
        for name in self._gone_peers:
            tx.conn.execute(sql.DELETE_LISTENER, (name,))
        self._gone_peers = []
        own = self._listener.name if self._listener is not None else None
        self._peers = [r[0] for r in tx.conn.execute(sql.SELECT_LISTENERS) if r[0] != own]

    def _poll_interval(self) -> float:
        if not self._wakers:
            return IDLE_POLL_S
        # With socket wake-ups, polling only catches commits that send none.
        return IDLE_POLL_S if self._listener is not None else CROSS_PROCESS_POLL_S

    def _watch_loop(self) -> None:
        """Notice commits by other processes: PRAGMA data_version changes when any other
        connection commits. Polled only while someone waits."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            last = conn.execute("PRAGMA data_version").fetchone()[0]
            while not self._stop.wait(self._poll_interval()):
                if not self._wakers:
                    continue
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != last:
                    last = version
                    self.notify()
        except sqlite3.Error:
            log.exception("mqstore watcher stopped", extra={"action": "watch_failed"})
        finally:
            conn.close()

    # --- sessions and upkeep --------------------------------------------------------------

    def open_session(self, name: str | None, default_visibility_ms: int) -> int:
        pid = os.getpid()
        start = process_start_time(pid) or "unknown"
        session = self.run(store.open_session, pid, start, self.boot_id, name)
        self._sessions[session] = default_visibility_ms
        return int(session)

    def close_session(self, session: int) -> None:
        self._sessions.pop(session, None)
        self.run(store.close_session, session)

    def _reap(self, tx: store.Txn) -> None:
        """Close sessions whose process is dead (or from another boot)."""
        for session_id, pid, start, boot in store.sessions(tx):
            if session_id in self._sessions:
                continue
            alive = boot == self.boot_id and process_start_time(pid) in (start, "unknown")
            if not alive:
                log.info(
                    "reclaiming session %s of dead process %s",
                    session_id,
                    pid,
                    extra={"action": "reap_session"},
                )
                store.close_session(tx, session_id)

    def _upkeep_step(self, tx: store.Txn) -> int:
        self._refresh_peers(tx)
        store.renew(tx, dict(self._sessions))
        store.requeue_expired(tx)
        # Due delayed messages, message TTLs (dead-lettering), unused queues (x-expires).
        swept = store.sweep(tx)
        self._reap(tx)
        self._next_due_ms = store.next_due(tx)
        return swept

    def upkeep(self) -> None:
        """Heartbeat, renew own leases, requeue expired ones, reclaim dead processes';
        expire messages and unused queues."""
        swept = self.run(self._upkeep_step)
        # A backlog of expired messages: work it off in bounded transactions, so the write
        # lock is never held for long.
        for _ in range(SWEEP_ROUNDS):
            if swept < store.EXPIRY_BATCH:
                break
            swept = self.run(store.sweep)

    def checkpoint(self) -> tuple[int, int, int] | None:
        """Checkpoint the WAL if this process is the file's checkpointer and it has grown.
        Runs between batches (never inside a transaction). Under constant load some thread
        always leads a batch and a waiter for the leader role could starve (the WAL then
        grew past 500 MiB within a second): the current leader runs it after its batch."""
        with self._lock:
            self._checkpoint_due = True
            self._wait_while(lambda: self._leader and self._checkpoint_due)
            if not self._checkpoint_due:
                return self._checkpoint_result  # the leader ran it
            self._leader = True
        try:
            return self._checkpoint_now()
        finally:
            with self._lock:
                self._pass_lead()

    def _checkpoint_now(self) -> tuple[int, int, int] | None:
        """Run by the leader, outside any transaction."""
        self._checkpoint_due = False
        self._checkpoint_result = None
        try:
            self.checkpointer.follow_writes(self._conn, wrote=False, now=time.monotonic())
            self._checkpoint_result = self.checkpointer.maybe_checkpoint(self._conn)
            self.checkpointer.maybe_vacuum(self._conn)
        except sqlite3.Error as exc:
            raise _map_sqlite_error(exc, self.path) from exc
        return self._checkpoint_result

    def _run_due_checkpoint(self) -> None:
        try:
            self._checkpoint_now()
        except errors.MqstoreError as exc:
            log.warning("mqstore checkpoint failed: %s", exc, extra={"action": "upkeep_failed"})
        with self._lock:
            if self._idle_waiters:
                self._cond.notify_all()  # checkpoint() waits for this

    def _lease_taken(self, lease_ms: int) -> None:
        """Renew at least three times per lease, so a live connection never loses one."""
        interval = max(MIN_UPKEEP_INTERVAL_S, lease_ms / 3000)
        if interval < self._upkeep_interval:
            self._upkeep_interval = interval
            self._upkeep_wake.set()

    def _scheduled(self, deliver_at_ms: int) -> None:
        """A delayed message was stored: wake upkeep in time if it is due before the next
        planned round."""
        due = self._next_due_ms
        if due is None or deliver_at_ms < due:
            self._next_due_ms = deliver_at_ms
            self._upkeep_wake.set()

    def _upkeep_wait(self) -> float:
        """Seconds until the next upkeep round: the interval, or sooner when a delayed
        message is due sooner (one timer for all of them, never one per message)."""
        due = self._next_due_ms
        if due is None:
            return self._upkeep_interval
        until = (due - self.clock.wall_ms()) / 1000
        return min(self._upkeep_interval, max(until, DUE_FLOOR_S))

    def _upkeep_loop(self) -> None:
        while not self._stop.is_set():
            if self._upkeep_wake.wait(self._upkeep_wait()):
                # A shorter lease was taken, or the engine closes: wait again, shorter.
                self._upkeep_wake.clear()
                continue
            try:
                self.upkeep()
                self.checkpoint()
            except errors.MqstoreError as exc:
                log.warning("mqstore upkeep failed: %s", exc, extra={"action": "upkeep_failed"})

    # --- closing --------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed or os.getpid() != self._pid:
            return
        name = self._listener.name if self._listener is not None else None
        try:
            # Runs after (so commits) every posted operation still queued.
            self.run(_forget_listener, name)
        except errors.MqstoreError:
            pass  # others drop the listener when their wake-up is refused
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._stop.set()
        self._kick.set()
        self._upkeep_wake.set()
        for thread in (self._flusher, self._upkeep, self._watcher):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)
        with self._lock:
            self._wait_while(lambda: self._leader)
            self._closed = True
        self._conn.close()
        self.checkpointer.close()
        self._identity.close()
        if self._sender is not None:
            self._sender.close()


QUICK_CHECK_MAX_BYTES = 64 * 1024 * 1024
_PAUSE = threading.Event()  # never set: a sleep that works under libfaketime


def _quick_check(conn: sqlite3.Connection, path: str) -> list[str]:
    """Check the whole file at open when it is small (quick_check is O(file size): seconds
    for millions of messages); larger files are checked page by page as SQLite reads them
    (damage is then SQLITE_CORRUPT, raised as StoreCorruptError)."""
    if os.path.getsize(path) > QUICK_CHECK_MAX_BYTES:
        return ["ok"]
    # quick_check reports most damage as rows, not as an exception: read them all.
    return [row[0] for row in conn.execute("PRAGMA quick_check")]


def _set_pragmas(conn: sqlite3.Connection, *, new_file: bool) -> None:
    """The one place pragmas are set.

    - auto_vacuum=INCREMENTAL on new files; journal_mode=WAL: readers never block the
      writer, commits append to the WAL.
    - synchronous: FULL for batches holding publishes (fsync before a publish returns),
      NORMAL otherwise; see the module docstring. Set per batch in Engine._execute.
    - foreign_keys=ON: deleting a queue cascades to its entries, bindings and consumers.
    - busy_timeout: opening waits (bounded) for other processes; once open, the engine
      sets it to 0 and Engine._begin retries in finer steps than SQLite's busy handler.
    - journal_size_limit: the WAL file is truncated back to 8 MiB after checkpoints.
    - wal_autocheckpoint=0: see mqstore.wal (one checkpointing process per file).
    """
    if new_file:
        # Before journal_mode writes the header: a drained queue's pages can then go back
        # to the file system (wal.Checkpointer.maybe_vacuum). Existing files (an
        # application's own, or a damaged one) are never touched by it.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    for _ in range(50):
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA journal_size_limit={wal.JOURNAL_SIZE_LIMIT}")
    # Checkpoints are run by one process per file (wal.Checkpointer), not after commits.
    conn.execute("PRAGMA wal_autocheckpoint=0")


class _Registry:
    """Engines shared by every connection to one file in this process, so their operations
    share group commits. Reset in a forked child: the parent's engines must not be used."""

    def __init__(self) -> None:
        self._engines: dict[tuple[str, int], Engine] = {}
        self._lock = threading.Lock()

    def acquire(
        self,
        path: str,
        clock: Clock | None = None,
        disk_free_limit: int = wal.DEFAULT_DISK_FREE_LIMIT,
    ) -> Engine:
        real = os.path.realpath(path)
        key = (real, id(clock))
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = Engine(real, clock=clock, disk_free_limit=disk_free_limit)
                self._engines[key] = engine
            engine.refs += 1
            return engine

    def release(self, engine: Engine) -> None:
        with self._lock:
            engine.refs -= 1
            if engine.refs > 0:
                return
            for key, value in list(self._engines.items()):
                if value is engine:
                    del self._engines[key]
        engine.close()

    def forget_all(self) -> None:
        self._engines = {}
        self._lock = threading.Lock()


_registry = _Registry()
os.register_at_fork(after_in_child=_registry.forget_all)
# Set in a forked child: only then can an engine be used from the wrong process (saves an
# os.getpid() per operation).
_forks: list[bool] = []
os.register_at_fork(after_in_child=lambda: _forks.append(True))
acquire = _registry.acquire
release = _registry.release
