#!/usr/bin/env python3
"""Many worker processes on one file: drain throughput, cross-process latency, idle CPU, WAL bound.

    .venv/bin/python benchmarks/bench_processes.py [--quick] [--dir DIR]

Every figure comes from real processes on a real file (default: under ``benchmarks/results``,
the repository's file system, not a tmpfs), in one run:

- raw sqlite3's commit rate (one INSERT + COMMIT per transaction, WAL, synchronous FULL and
  NORMAL) on the same file system: the reference every throughput is compared with;
- 100,000 pre-published messages drained by 1 worker process, then (a copy of the same file)
  by 4 worker processes, each with prefetch 100 and one basic_ack per message; every acked
  id is collected to count duplicates and losses (both must be 0, four must not be slower
  than one);
- publish-to-delivery latency across processes: 500 messages published 2 ms apart by this
  process to a consumer process waiting on the empty queue (p50 <= 1 ms, p99 <= 5 ms);
- CPU of an idle consumer process waiting on an empty queue, over 10 s (< 1% of a core);
- the WAL file's size, sampled with os.stat every 100 ms, under a 60-second mixed load of 2
  producer and 2 consumer processes: its maximum and its final size. How it is bounded:
  one checkpointing process per file (mqstore.wal) runs PASSIVE checkpoints, which cannot
  restart the WAL while other processes keep writing, and TRUNCATE past 64 MiB, which
  waits for the write lock and then empties the WAL; so the bound is 64 MiB plus what is
  written while TRUNCATE waits (journal_size_limit trims a restarted WAL to 8 MiB).

``--quick`` shrinks every case (10,000 messages, 100 latency samples, 3 s idle, 10 s load) for
a smoke test. The table is printed and written as Markdown to
``benchmarks/results/processes.md``. Only the standard library and mqstore are used; worker
processes are this script run with a hidden ``worker-*`` subcommand.
"""

from __future__ import annotations

import argparse
import array
import datetime
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mqstore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
PREFETCH = 100
SAFETY_TIMEOUT_S = 600.0


def now_ns() -> int:
    return time.clock_gettime_ns(CLOCK)


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(" ".join([event, *(f"{k}={v}" for k, v in fields.items())]) + "\n")
    sys.stdout.flush()


def wait_for_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.001)


def connect(db: str, **params: Any) -> mqstore.BlockingConnection:
    return mqstore.BlockingConnection(mqstore.ConnectionParameters(path=db, **params))


# --- workers (child processes) ------------------------------------------------------------------


def worker_drain(args: argparse.Namespace) -> None:
    """Consume (prefetch 100), ack each message, record its id; until the stop file exists.
    Reports ``progress acked=N t_last=NS`` every 1000 acks and whenever it goes idle."""
    ids = array.array("q")
    redelivered = 0
    last_ack_ns = 0
    with connect(args.db) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=args.prefetch)
        say("ready")
        wait_for_file(args.start)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            nonlocal redelivered, last_ack_ns
            ch.basic_ack(method.delivery_tag)
            last_ack_ns = now_ns()
            ids.append(int(body.split(b" ", 1)[0]))
            redelivered += method.redelivered
            if len(ids) % 1000 == 0:
                say("progress", acked=len(ids), t_last=last_ack_ns)

        channel.basic_consume(args.queue, on_message)
        reported = -1
        while not os.path.exists(args.stop):
            before = len(ids)
            conn.process_data_events(time_limit=0.02)
            if len(ids) == before and reported != len(ids):
                reported = len(ids)
                say("progress", acked=len(ids), t_last=last_ack_ns)
    Path(args.ids).write_bytes(ids.tobytes())
    say("done", acked=len(ids), redelivered=redelivered)


def worker_latency(args: argparse.Namespace) -> None:
    """Wait on an empty queue; for each message, the delay from its publish call (stamped in
    the body, CLOCK_BOOTTIME, host-wide) to its delivery here. Exits after ``count``."""
    received: list[str] = []
    with connect(args.db) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=args.prefetch)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            arrived = now_ns()
            seq, sent = body.split()
            received.append(f"{int(seq)}:{arrived - int(sent)}:{arrived}")
            ch.basic_ack(method.delivery_tag)
            if len(received) >= args.count:
                ch.stop_consuming()

        channel.basic_consume(args.queue, on_message)
        conn.process_data_events(time_limit=0.05)  # idle once: the wake-up listener is up
        say("ready")
        channel.start_consuming()
    say("latencies", ns=",".join(received))


def worker_idle(args: argparse.Namespace) -> None:
    """A consumer waiting on an empty queue, until killed."""
    with connect(args.db) as conn:
        channel = conn.channel()
        channel.basic_consume(args.queue, lambda *a: None)
        conn.process_data_events(time_limit=0.05)
        say("ready")
        channel.start_consuming()


def worker_produce(args: argparse.Namespace) -> None:
    """Publish ``body_size``-byte messages as fast as possible until the stop file exists."""
    body = os.urandom(args.body_size)
    sent = 0
    with connect(args.db, durability=args.durability) as conn:
        channel = conn.channel()
        say("ready")
        wait_for_file(args.start)
        while not (sent % 50 == 0 and os.path.exists(args.stop)):
            channel.basic_publish("", args.queue, b"%d " % sent + body)
            sent += 1
    say("done", sent=sent)


# --- measurements (this process) ------------------------------------------------------------------


class Proc:
    """A worker process and its parsed stdout lines."""

    def __init__(self, mode: str, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, mode, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.events: list[tuple[str, dict[str, str]]] = []
        self.cond = threading.Condition()
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event, *pairs = line.split()
            fields = dict(p.split("=", 1) for p in pairs)
            with self.cond:
                self.events.append((event, fields))
                self.cond.notify_all()
        with self.cond:
            self.events.append(("eof", {}))
            self.cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_for(self, event: str) -> dict[str, str]:
        deadline = time.monotonic() + SAFETY_TIMEOUT_S
        with self.cond:
            while True:
                for name, fields in self.events:
                    if name == event:
                        return fields
                    if name == "eof":
                        raise RuntimeError(f"worker exited before {event!r}: {self.stderr}")
                if not self.cond.wait(deadline - time.monotonic()):
                    raise RuntimeError(f"worker: no {event!r} in {SAFETY_TIMEOUT_S} s")

    def last(self, event: str) -> dict[str, str] | None:
        with self.cond:
            found = [f for e, f in self.events if e == event]
        return found[-1] if found else None

    def finish(self) -> None:
        if self.proc.wait(timeout=SAFETY_TIMEOUT_S) != 0:
            raise RuntimeError(f"worker failed: {self.stderr}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def raw_commit_rate(workdir: Path, synchronous: str, seconds: float) -> float:
    """Raw sqlite3, WAL: one INSERT and one COMMIT per transaction, for ``seconds``."""
    conn = sqlite3.connect(workdir / f"raw-{synchronous}.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        body = os.urandom(64)
        n = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
            conn.execute("COMMIT")
            n += 1
        return n / elapsed
    finally:
        conn.close()


def prepublish(path: Path, count: int) -> None:
    with connect(str(path), durability="normal") as conn:
        channel = conn.channel()
        channel.queue_declare("drain", durable=True)
        pad = b"x" * 64
        for i in range(count):
            channel.basic_publish("", "drain", b"%d " % i + pad)


def copy_db(source: Path, target: Path) -> None:
    """Through SQLite's backup API (never a file copy of a live database)."""
    src = sqlite3.connect(source, isolation_level=None)
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


@dataclass
class Drain:
    workers: int
    count: int
    seconds: float
    deliveries: int
    duplicates: int
    losses: int
    redelivered: int
    left_in_queue: int
    per_worker: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def drain(workdir: Path, template: Path, workers: int, count: int) -> Drain:
    run = workdir / f"drain-{workers}"
    run.mkdir()
    db = run / "mq.db"
    copy_db(template, db)
    start, stop = run / "start", run / "stop"
    procs = [
        Proc(
            "worker-drain",
            str(db),
            "--start",
            str(start),
            "--stop",
            str(stop),
            "--ids",
            str(run / f"ids-{i}"),
            "--prefetch",
            str(PREFETCH),
        )
        for i in range(workers)
    ]
    try:
        for p in procs:
            p.wait_for("ready")
        t0 = now_ns()
        start.touch()

        def acked() -> int:
            return sum(int((p.last("progress") or {"acked": "0"})["acked"]) for p in procs)

        deadline = time.monotonic() + SAFETY_TIMEOUT_S
        while acked() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"drain stalled at {acked()} of {count}")
            if any(p.proc.poll() is not None for p in procs):
                raise RuntimeError(f"a worker died: {[p.stderr for p in procs]}")
            time.sleep(0.01)  # a progress poll, not a measurement boundary (t_last is)
        t_end = max(int((p.last("progress") or {"t_last": "0"})["t_last"]) for p in procs)
        stop.touch()
        for p in procs:
            p.finish()
    finally:
        for p in procs:
            p.kill()
    ids: list[int] = []
    per_worker = []
    for i in range(workers):
        part = array.array("q")
        part.frombytes((run / f"ids-{i}").read_bytes())
        ids.extend(part)
        per_worker.append(len(part))
    seen = Counter(ids)
    redelivered = sum(int(p.last("done")["redelivered"]) for p in procs)  # type: ignore[index]
    check = sqlite3.connect(db, isolation_level=None)
    try:
        left = check.execute("SELECT count(*) FROM mq_entries").fetchone()[0]
    finally:
        check.close()
    return Drain(
        workers=workers,
        count=count,
        seconds=(t_end - t0) / 1e9,
        deliveries=len(ids),
        duplicates=len(ids) - len(seen),
        losses=len(set(range(count)) - set(seen)),
        redelivered=redelivered,
        left_in_queue=left,
        per_worker=per_worker,
    )


def latency(workdir: Path, count: int) -> tuple[list[float], list[float]]:
    """Milliseconds to the delivery in another process: from the publish call (including its
    fsync'd commit) and from the publish call's return (the wake-up path alone)."""
    db = workdir / "latency.db"
    with connect(str(db)) as conn:
        conn.channel().queue_declare("lat", durable=True)
    consumer = Proc("worker-latency", str(db), "--count", str(count), "--prefetch", "1")
    try:
        consumer.wait_for("ready")
        with connect(str(db)) as conn:
            channel = conn.channel()
            next_at = time.monotonic()
            returned: list[int] = []
            for seq in range(count):
                next_at += 0.002
                channel.basic_publish("", "lat", b"%d %d" % (seq, now_ns()))
                returned.append(now_ns())
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing: one message every 2 ms
            result = consumer.wait_for("latencies")
        consumer.finish()
    finally:
        consumer.kill()
    from_call, from_return = [], []
    for item in result["ns"].split(","):
        seq, delay, arrived = map(int, item.split(":"))
        from_call.append(delay / 1e6)
        from_return.append((arrived - returned[seq]) / 1e6)
    return from_call, from_return


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def idle_cpu(workdir: Path, seconds: float) -> float:
    """% of one core used by a consumer process waiting on an empty queue."""
    db = workdir / "idle.db"
    with connect(str(db)) as conn:
        conn.channel().queue_declare("idle", durable=True)
    consumer = Proc("worker-idle", str(db), "--queue", "idle")
    try:
        consumer.wait_for("ready")
        time.sleep(1.0)  # let start-up work settle: it is not idle time
        before, t0 = cpu_ticks(consumer.proc.pid), time.monotonic()
        time.sleep(seconds)  # the measurement window
        after, t1 = cpu_ticks(consumer.proc.pid), time.monotonic()
    finally:
        consumer.kill()
    return (after - before) / os.sysconf("SC_CLK_TCK") / (t1 - t0) * 100


@dataclass
class Soak:
    seconds: float
    max_wal: int
    final_wal_under_load: int
    wal_after_close: int
    samples: int
    published: int
    consumed: int


def wal_soak(workdir: Path, seconds: float) -> Soak:
    run = workdir / "soak"
    run.mkdir()
    db = run / "mq.db"
    with connect(str(db)) as conn:
        conn.channel().queue_declare("soak", durable=True)
    start, stop = run / "start", run / "stop"
    common = ["--start", str(start), "--stop", str(stop), "--queue", "soak"]
    producers = [
        Proc("worker-produce", str(db), *common, "--durability", d, "--body-size", "1024")
        for d in ("full", "normal")
    ]
    consumers = [
        Proc("worker-drain", str(db), *common, "--ids", str(run / f"ids-{i}"), "--prefetch", "100")
        for i in range(2)
    ]
    wal = Path(f"{db}-wal")
    sizes: list[int] = []
    try:
        for p in producers + consumers:
            p.wait_for("ready")
        start.touch()
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # the sampler: a measurement, one os.stat per 100 ms
            try:
                sizes.append(wal.stat().st_size)
            except FileNotFoundError:
                sizes.append(0)
            time.sleep(0.1)
        stop.touch()
        for p in producers + consumers:
            p.finish()
    finally:
        for p in producers + consumers:
            p.kill()
    after = wal.stat().st_size if wal.exists() else 0
    return Soak(
        seconds=seconds,
        max_wal=max(sizes),
        final_wal_under_load=sizes[-1],
        wal_after_close=after,
        samples=len(sizes),
        published=sum(int(p.last("done")["sent"]) for p in producers),  # type: ignore[index]
        consumed=sum(int(p.last("done")["acked"]) for p in consumers),  # type: ignore[index]
    )


# --- report ---------------------------------------------------------------------------------------


def fs_of(path: Path) -> str:
    best = ("?", "?", "")
    with open("/proc/mounts", encoding="ascii") as f:
        for line in f:
            dev, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) >= len(best[2]):
                best = (fstype, dev, mount)
    return f"{best[0]} ({best[1]} on {best[2]})"


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("worker-"):
        return worker_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small figures: a smoke test")
    parser.add_argument("--dir", type=Path, default=RESULTS, help="where the databases go")
    args = parser.parse_args(argv)
    quick = args.quick
    n_drain = 10_000 if quick else 100_000
    n_latency = 100 if quick else 500
    idle_s = 3.0 if quick else 10.0
    soak_s = 10.0 if quick else 60.0
    raw_s = 0.5 if quick else 2.0
    args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-proc-", dir=args.dir))
    load_before = os.getloadavg()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    try:
        log("raw sqlite3 commit rates …")
        raw_full = raw_commit_rate(workdir, "FULL", raw_s)
        raw_normal = raw_commit_rate(workdir, "NORMAL", raw_s)
        log(f"  FULL {raw_full:,.0f}/s, NORMAL {raw_normal:,.0f}/s")
        log(f"pre-publishing {n_drain:,} messages …")
        template = workdir / "template.db"
        prepublish(template, n_drain)
        one = drain(workdir, template, 1, n_drain)
        log(f"  1 worker: {one.rate:,.0f} msgs/s")
        four = drain(workdir, template, 4, n_drain)
        log(f"  4 workers: {four.rate:,.0f} msgs/s {four.per_worker}")
        lat, lat_wake = latency(workdir, n_latency)
        p50, p99 = statistics.median(lat), statistics.quantiles(lat, n=100)[98]
        w50, w99 = statistics.median(lat_wake), statistics.quantiles(lat_wake, n=100)[98]
        log(f"  latency p50 {p50:.3f} ms p99 {p99:.3f} ms (from return {w50:.3f} / {w99:.3f})")
        cpu = idle_cpu(workdir, idle_s)
        log(f"  idle CPU {cpu:.2f}%")
        soak = wal_soak(workdir, soak_s)
        log(f"  WAL max {mib(soak.max_wal)}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    drains_ok = [d.duplicates == 0 and d.losses == 0 and d.left_in_queue == 0 for d in (one, four)]
    rows = [
        (
            "raw sqlite3 INSERT+COMMIT, WAL, synchronous=FULL",
            f"{raw_full:,.0f} commits/s",
            "reference",
            "—",
            "—",
        ),
        (
            "raw sqlite3 INSERT+COMMIT, WAL, synchronous=NORMAL",
            f"{raw_normal:,.0f} commits/s",
            "reference",
            "—",
            "—",
        ),
        (
            f"drain {n_drain:,} msgs, 1 worker process, prefetch {PREFETCH}, ack each",
            f"{one.rate:,.0f} msgs/s ({one.seconds:.2f} s)",
            f"{one.rate / raw_normal:.2f}x raw NORMAL",
            "dups 0, losses 0",
            f"{verdict(drains_ok[0])} (dups {one.duplicates}, losses {one.losses})",
        ),
        (
            f"drain {n_drain:,} msgs, 4 worker processes, prefetch {PREFETCH}, ack each",
            f"{four.rate:,.0f} msgs/s ({four.seconds:.2f} s)",
            f"{four.rate / one.rate:.2f}x 1 worker; {four.rate / raw_normal:.2f}x raw NORMAL",
            ">= 1 worker; dups 0, losses 0",
            f"{verdict(drains_ok[1] and four.rate >= one.rate)} (dups {four.duplicates}, "
            f"losses {four.losses}; acks per worker {four.per_worker})",
        ),
        (
            f"latency, {n_latency} msgs 2 ms apart, publish call -> delivery in another process",
            f"p50 {p50:.3f} ms, p99 {p99:.3f} ms (max {max(lat):.3f})",
            "local RabbitMQ: 0.44 / 0.88 ms",
            "p50 <= 1 ms, p99 <= 5 ms",
            verdict(p50 <= 1.0 and p99 <= 5.0),
        ),
        (
            "same messages, from the publish call's return (negative: delivered before "
            "the publisher's call returned; the wake-up is sent at commit)",
            f"p50 {w50:.3f} ms, p99 {w99:.3f} ms (max {max(lat_wake):.3f})",
            "—",
            "—",
            "—",
        ),
        (
            f"idle waiting consumer CPU over {idle_s:.0f} s",
            f"{cpu:.2f}% of a core",
            "—",
            "< 1%",
            verdict(cpu < 1.0),
        ),
        (
            f"WAL size, {soak_s:.0f} s mixed load (2 producers 1 KiB full/normal, 2 consumers)",
            f"max {mib(soak.max_wal)}, final {mib(soak.final_wal_under_load)}, "
            f"after close {mib(soak.wal_after_close)}",
            f"{soak.samples} samples; {soak.published:,} published, {soak.consumed:,} acked",
            "bounded: < 128 MiB (TRUNCATE at 64 MiB, plus what is written while it waits)",
            verdict(
                soak.max_wal < 128 * 1024 * 1024 and soak.final_wal_under_load < 128 * 1024 * 1024
            ),
        ),
    ]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# mqstore multi-process benchmark",
        "",
        f"`python benchmarks/bench_processes.py{' --quick' if quick else ''}` — {when}, "
        f"mode: {'quick (smoke test, small figures)' if quick else 'full'}",
        "",
        f"- CPUs: {os.cpu_count()}",
        f"- File system: {fs_of(args.dir)}",
        f"- SQLite: {sqlite3.sqlite_version}",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- mqstore: {mqstore.__version__}",
        f"- Load average (1 min) before / after the run: {load_before[0]:.2f} / "
        f"{os.getloadavg()[0]:.2f} (other work on the machine skews every figure)",
        "",
        "| Case | Result | Reference / ratio | Target | Pass |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
    ]
    text = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "processes.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("db")
    parser.add_argument("--queue", default=None)
    parser.add_argument("--start")
    parser.add_argument("--stop")
    parser.add_argument("--ids")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--prefetch", type=int, default=PREFETCH)
    parser.add_argument("--durability", default="full")
    parser.add_argument("--body-size", type=int, default=1024)
    args = parser.parse_args(argv)
    modes = {
        "worker-drain": (worker_drain, "drain"),
        "worker-latency": (worker_latency, "lat"),
        "worker-idle": (worker_idle, "idle"),
        "worker-produce": (worker_produce, "soak"),
    }
    fn, default_queue = modes[args.mode]
    args.queue = args.queue or default_queue
    fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
