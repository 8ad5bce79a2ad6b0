"""Crash-test harness: child processes driven by their output, and a history checker.

- :class:`Child` runs ``python -m tests.crash.child MODE ...`` from the repository root and
  collects its stdout lines on a reader thread. Tests wait for marker lines
  (:meth:`Child.wait_for`) and kill, stop or continue the child when one arrives; the
  timeouts passed around here are safety bounds that fail the test, never kill triggers.
- :class:`History` is a Jepsen-style checker (RELIABILITY.md section 4.0): publish attempts
  and their outcomes, deliveries and their acks; :meth:`History.check` classifies every
  message as lost, unexpected, duplicated or double-leased.
- :func:`integrity_check` opens a fresh sqlite3 connection; call it only once every mqstore
  connection of this process to that file is closed (POSIX locks: RELIABILITY.md section 2.6).
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mqstore

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
#: Safety bound for a child to reach a marker line; the test fails past it.
MARKER_TIMEOUT_S = 20.0


def now() -> float:
    """CLOCK_BOOTTIME seconds: the clock children stamp their events with (host-wide)."""
    return time.clock_gettime(CLOCK)


def parse(line: str) -> tuple[str, dict[str, str]]:
    """``'ok id=m-3'`` -> ``('ok', {'id': 'm-3'})``."""
    event, *pairs = shlex.split(line)
    fields = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        fields[key] = value
    return event, fields


class ChildFailed(AssertionError):
    """A child did not behave: it exited early, reported an error or missed a marker."""


class Child:
    """One child process and the lines it printed so far."""

    def __init__(
        self,
        mode: str,
        db: str | os.PathLike[str],
        *args: str,
        name: str = "",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: extra environment variables (LD_PRELOAD of libfaketime ...)."""
        self.name = name or mode
        self.argv = [sys.executable, "-m", "tests.crash.child", mode, str(db), *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.stderr = ""
        self.eof = False
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    # --- waiting for output -------------------------------------------------------------------

    def wait_for(
        self,
        event: str,
        *,
        nth: int = 1,
        timeout: float = MARKER_TIMEOUT_S,
    ) -> dict[str, str]:
        """Block until the child printed its ``nth`` ``event`` line; return its fields."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = [f for e, f in map(parse, self.lines) if e == event]
                if len(seen) >= nth:
                    return seen[nth - 1]
                errors = [line for line in self.lines if line.startswith("error")]
                if errors or self.eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        raise ChildFailed(f"{self.name}: no {nth}th {event!r} line; {self.describe()}")

    def wait_lines(self, count: int, *, timeout: float = MARKER_TIMEOUT_S) -> list[str]:
        """Block until the child printed at least ``count`` lines; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) < count and not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChildFailed(f"{self.name}: fewer than {count} lines; {self.describe()}")
                self._cond.wait(left)
            if len(self.lines) < count:
                raise ChildFailed(f"{self.name}: exited before {count} lines; {self.describe()}")
            return list(self.lines)

    def events(self, event: str | None = None) -> list[tuple[str, dict[str, str]]]:
        with self._cond:
            parsed = [parse(line) for line in self.lines]
        return [p for p in parsed if event is None or p[0] == event]

    def describe(self) -> str:
        tail = "\n".join(self.lines[-10:])
        return (
            f"pid {self.pid}, rc {self.proc.poll()}, argv {self.argv[3:]}\n"
            f"last stdout lines:\n{tail}\nstderr:\n{self.stderr[-3000:]}"
        )

    # --- signals and exit ---------------------------------------------------------------------

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self, *, reap: bool = True) -> float:
        """SIGKILL the child; returns the time.monotonic() of the kill. With ``reap`` (the
        default) also wait for it, so it is gone rather than a zombie, and drain its output."""
        killed_at = time.monotonic()
        os.kill(self.pid, signal.SIGKILL)
        if reap:
            self.reap()
        return killed_at

    def reap(self) -> None:
        self.proc.wait(timeout=MARKER_TIMEOUT_S)
        self._join()

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def finish(self, timeout: float = MARKER_TIMEOUT_S) -> int:
        """Wait for a normal exit; fail if it does not come or is not 0."""
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ChildFailed(f"{self.name}: did not exit; {self.describe()}") from None
        self._join()
        if rc != 0:
            raise ChildFailed(f"{self.name}: exit status {rc}; {self.describe()}")
        return rc

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=MARKER_TIMEOUT_S)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def cleanup(self) -> None:
        """Kill the child if it still runs (a failed test must not leave it behind)."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=MARKER_TIMEOUT_S)
        self._join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def children() -> Iterator[list[Child]]:
    """Collect the children a test starts; every one is killed and reaped at the end."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.cleanup()


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> float:
    """Poll ``predicate`` every 5 ms; return the seconds it took. Fails past ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - start


def proc_state(pid: int) -> str:
    """The one-letter state in /proc/<pid>/stat (R, S, T stopped, Z zombie ...)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def integrity_check(path: str | os.PathLike[str]) -> tuple[list[str], list[tuple]]:
    """``PRAGMA integrity_check`` rows and ``PRAGMA foreign_key_check`` rows, from a fresh
    connection. Only call once this process has no mqstore connection to ``path`` open."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        foreign = conn.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        conn.close()
    return integrity, foreign


def assert_intact(path: str | os.PathLike[str]) -> None:
    integrity, foreign = integrity_check(path)
    assert integrity == ["ok"], f"integrity_check of {path}: {integrity}"
    assert foreign == [], f"foreign_key_check of {path}: {foreign}"


def stored_messages(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(body as text, queue name) of every entry, ready or leased, read with plain sqlite3:
    the message inline in its entry, or shared in mq_messages."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT CAST(coalesce(e.body, m.body) AS TEXT), q.name FROM mq_entries e "
            "LEFT JOIN mq_messages m ON m.id = e.message_id JOIN mq_queues q ON q.id = e.queue_id"
        ).fetchall()
    finally:
        conn.close()


def table_count(path: str | os.PathLike[str], sql: str, params: tuple = ()) -> int:
    """One ``SELECT count(*)`` from a fresh connection (same rule as integrity_check)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return int(conn.execute(sql, params).fetchone()[0])
    finally:
        conn.close()


# --- history checker ----------------------------------------------------------------------------

OK, FAILED, UNKNOWN = "ok", "fail", "unknown"


@dataclass
class Delivery:
    """One delivery of a message to a consumer, and how it was settled.

    ``ack`` is ``"ok"`` (ack succeeded), ``"auto"`` (auto-ack: settled on delivery),
    ``"lost"`` (LeaseLostError), or ``None`` (never settled: the consumer died or gave up).
    Times are CLOCK_BOOTTIME seconds, taken after the lease and after the ack returned.
    """

    message_id: str
    consumer: str
    redelivered: bool
    delivery_count: int
    t_leased: float
    ack: str | None = None
    t_acked: float | None = None

    @property
    def settled(self) -> bool:
        return self.ack in ("ok", "auto")


@dataclass
class Verdict:
    """What :meth:`History.check` found; ``problems`` is empty when the history is valid."""

    lost: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)
    duplicated: dict[str, int] = field(default_factory=dict)
    double_lease: list[tuple[Delivery, Delivery]] = field(default_factory=list)
    acked_twice: set[str] = field(default_factory=set)
    bad_redelivery: list[tuple[Delivery, Delivery]] = field(default_factory=list)
    recovered: set[str] = field(default_factory=set)
    published_ok: int = 0

    def problems(self, *, allow_duplicates: bool) -> dict[str, object]:
        found: dict[str, object] = {
            "lost": sorted(self.lost),
            "unexpected": sorted(self.unexpected),
            "double_lease": self.double_lease,
            "acked_twice": sorted(self.acked_twice),
            "bad_redelivery": self.bad_redelivery,
        }
        if not allow_duplicates:
            found["duplicated"] = self.duplicated
        return {key: value for key, value in found.items() if value}


class History:
    """A Jepsen-style record of one test run (RELIABILITY.md section 4.0).

    Classification, on :meth:`check`:

    - **lost**: publish acknowledged (``ok``) but no delivery of it was ever settled.
    - **unexpected**: delivered but never attempted.
    - **duplicated**: delivered more than once; allowed only after a crash or lease loss,
      and then every later delivery must say ``redelivered`` with a higher delivery count
      (**bad_redelivery** otherwise).
    - **double_lease**: a later delivery handed out before an earlier one's ack that
      *succeeded*, i.e. two consumers held valid leases on one message at once.
    - **acked_twice**: two successful acks of one message (a stale token was accepted).
    - **recovered**: publish outcome unknown (in flight at a kill) but delivered: fine.
    """

    def __init__(self) -> None:
        self.attempts: dict[str, str] = {}
        self.deliveries: list[Delivery] = []

    def attempt(self, message_id: str) -> None:
        self.attempts.setdefault(message_id, UNKNOWN)

    def published(self, message_id: str, outcome: str = OK) -> None:
        self.attempts[message_id] = outcome

    def record_publisher(self, child: Child) -> None:
        """Read a ``publish`` child's ``try``/``ok`` lines into the history."""
        for event, fields in child.events():
            if event == "try":
                self.attempt(fields["id"])
            elif event == "ok":
                self.published(fields["id"])

    def delivered(
        self,
        message_id: str,
        consumer: str,
        *,
        redelivered: bool,
        delivery_count: int,
        t_leased: float | None = None,
        ack: str | None = None,
        t_acked: float | None = None,
    ) -> Delivery:
        delivery = Delivery(
            message_id,
            consumer,
            redelivered,
            delivery_count,
            now() if t_leased is None else t_leased,
            ack,
            t_acked,
        )
        self.deliveries.append(delivery)
        return delivery

    def record_consumer(self, child: Child) -> None:
        """Read a consumer child's ``got``/``acked`` (or ``leased``) lines."""
        open_deliveries: dict[str, Delivery] = {}
        for event, fields in child.events():
            if event in ("got", "leased", "processing"):
                open_deliveries[fields["id"]] = self.delivered(
                    fields["id"],
                    child.name,
                    redelivered=fields.get("redelivered", "0") == "1",
                    delivery_count=int(fields.get("count", "1")),
                    t_leased=float(fields["t"]) if "t" in fields else None,
                )
            elif event == "acked":
                delivery = open_deliveries.pop(fields["id"])
                delivery.ack = "ok"
                delivery.t_acked = float(fields["t"]) if "t" in fields else now()

    def check(self) -> Verdict:
        verdict = Verdict(published_ok=sum(v == OK for v in self.attempts.values()))
        by_id: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in sorted(self.deliveries, key=lambda d: d.t_leased):
            by_id[delivery.message_id].append(delivery)
        settled = {mid for mid, ds in by_id.items() if any(d.settled for d in ds)}
        verdict.lost = {mid for mid, out in self.attempts.items() if out == OK} - settled
        verdict.unexpected = set(by_id) - set(self.attempts)
        verdict.recovered = {
            mid for mid, out in self.attempts.items() if out == UNKNOWN and mid in by_id
        }
        counts = Counter(d.message_id for d in self.deliveries)
        verdict.duplicated = {mid: n for mid, n in counts.items() if n > 1}
        for mid, deliveries in by_id.items():
            if sum(d.ack == "ok" for d in deliveries) > 1:
                verdict.acked_twice.add(mid)
            for earlier, later in itertools.pairwise(deliveries):
                if not later.redelivered or later.delivery_count <= earlier.delivery_count:
                    verdict.bad_redelivery.append((earlier, later))
            for i, earlier in enumerate(deliveries):
                if earlier.ack != "ok" or earlier.t_acked is None:
                    continue
                for later in deliveries[i + 1 :]:
                    if later.t_leased < earlier.t_acked:
                        verdict.double_lease.append((earlier, later))
        return verdict


def assert_history_ok(
    history: History, *, allow_duplicates: bool = False, seed: int | None = None
) -> Verdict:
    verdict = history.check()
    problems = verdict.problems(allow_duplicates=allow_duplicates)
    where = f" (seed {seed}: rerun with MQSTORE_CRASH_SEED={seed})" if seed is not None else ""
    assert not problems, f"history check failed{where}: {problems}"
    return verdict


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def all_fields(child: Child, event: str, key: str) -> list[str]:
    return [fields[key] for _, fields in child.events(event)]


def flatten(groups: Iterable[Iterable[str]]) -> list[str]:
    return [item for group in groups for item in group]


def connect(path: str | os.PathLike[str], **params: object) -> mqstore.BlockingConnection:
    """The parent's own connection (a live process with its own upkeep thread)."""
    return mqstore.BlockingConnection(mqstore.ConnectionParameters(path=str(path), **params))


def drain(channel: mqstore.BlockingChannel, queue: str, history: History, consumer: str) -> int:
    """Take every ready message with auto_ack, recording each delivery; returns how many."""
    taken = 0
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return taken
        history.delivered(
            body.decode(),
            consumer,
            redelivered=method.redelivered,
            delivery_count=method.delivery_count,
            ack="auto",
        )
        taken += 1
