#!/usr/bin/env python3
"""Core throughput of mqstore next to raw sqlite3, on the same file system, in the same run.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--dir DIR]

Why a reference is measured rather than quoted: a durable publish can never be faster than
one fsync'd SQLite commit, and that cost depends entirely on the disk and file system. So the
targets that are relative (sequential durable publish >= 70% of raw sqlite3) are judged
against raw sqlite3 measured here, and every row shows its ratio to that reference.

Each figure is the median of 5 runs (min and max shown); N is calibrated per case so a run
takes a second or two. Every run of an mqstore case is paired with a run of its raw sqlite3
reference just before it, and the ratio shown is the median of the 5 pairwise ratios: the
fsync latency of a shared virtual disk drifts by tens of percent within a minute, which would
skew a ratio of medians taken minutes apart. (``--quick``: a tenth of a second per run, for
smoke tests only.) Every run gets a fresh directory under the bench directory (default:
``benchmarks/results``, i.e. the repository's file system, not a tmpfs), removed afterwards.
The table is printed and written as Markdown to ``benchmarks/results/core.md``. Below it,
sequential durable publish is measured once more interleaved with the reference (alternating
slices of 500 commits on two open files), the figure least moved by the disk's drift.

Only the standard library and mqstore's public API are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mqstore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = 5
CONCURRENCY = 64
PREFETCH = 100
BODY_SIZE = 256
QUEUE = "bench"
# 1024 distinct random bodies, cycled: random so SQLite cannot benefit from compressible
# pages, pre-generated so os.urandom is not what gets measured.
BODIES = [os.urandom(BODY_SIZE) for _ in range(1024)]


def body(i: int) -> bytes:
    return BODIES[i % len(BODIES)]


# --- reference: raw sqlite3 ------------------------------------------------------------------


def raw_connection(workdir: str, synchronous: str) -> sqlite3.Connection:
    """The reference's file: WAL mode, one table of bodies."""
    conn = sqlite3.connect(os.path.join(workdir, "raw.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    return conn


def raw_commits(conn: sqlite3.Connection, n: int) -> float:
    """Seconds for ``n`` messages, one INSERT and one COMMIT each."""
    start = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO messages (body) VALUES (?)", (body(i),))
        conn.execute("COMMIT")
    return time.perf_counter() - start


def raw_sqlite(synchronous: str) -> Callable[[str, int], float]:
    """One INSERT and one COMMIT per message, WAL mode: the best a per-message durable
    write can do through Python's sqlite3 on this file system."""

    def run(workdir: str, n: int) -> float:
        conn = raw_connection(workdir, synchronous)
        try:
            return raw_commits(conn, n)
        finally:
            conn.close()

    return run


# --- mqstore publishers ----------------------------------------------------------------------


def _params(workdir: str, durability: str) -> mqstore.ConnectionParameters:
    return mqstore.ConnectionParameters(path=os.path.join(workdir, "mq.db"), durability=durability)


def seq_publish(durability: str) -> Callable[[str, int], float]:
    """One blocking publisher: each basic_publish returns after its own commit."""

    def run(workdir: str, n: int) -> float:
        with mqstore.BlockingConnection(_params(workdir, durability)) as conn:
            channel = conn.channel()
            channel.queue_declare(QUEUE, durable=True)
            start = time.perf_counter()
            for i in range(n):
                channel.basic_publish("", QUEUE, body(i))
            return time.perf_counter() - start

    return run


async def _aio_publish(workdir: str, durability: str, n: int) -> float:
    conn = await mqstore.aio.connect(os.path.join(workdir, "mq.db"), durability=durability)
    try:
        channel = await conn.channel()
        await channel.queue_declare(QUEUE, durable=True)
        channels = [await conn.channel() for _ in range(CONCURRENCY)]

        async def publisher(ch: mqstore.aio.AsyncChannel, k: int) -> None:
            for i in range(k, n, CONCURRENCY):  # exactly n in all, even if 64 does not divide n
                await ch.basic_publish("", QUEUE, body(i))

        start = time.perf_counter()
        await asyncio.gather(*(publisher(ch, k) for k, ch in enumerate(channels)))
        return time.perf_counter() - start
    finally:
        await conn.close()


def aio_publish(durability: str) -> Callable[[str, int], float]:
    """64 tasks, each with its own channel on one connection; they share group commits."""
    return lambda workdir, n: asyncio.run(_aio_publish(workdir, durability, n))


def thread_publish(durability: str) -> Callable[[str, int], float]:
    """64 threads, each with its own BlockingConnection to the same file (hence the same
    engine, hence shared group commits). Timed from a barrier to the last publish."""

    def run(workdir: str, n: int) -> float:
        params = _params(workdir, durability)
        with mqstore.BlockingConnection(params) as conn:
            conn.channel().queue_declare(QUEUE, durable=True)
        started: list[float] = []
        ended: list[float] = []
        failures: list[BaseException] = []
        barrier = threading.Barrier(CONCURRENCY, action=lambda: started.append(time.perf_counter()))

        def publisher(k: int) -> None:
            try:
                with mqstore.BlockingConnection(params) as conn:
                    channel = conn.channel()
                    barrier.wait()
                    for i in range(k, n, CONCURRENCY):
                        channel.basic_publish("", QUEUE, body(i))
                    ended.append(time.perf_counter())
            except BaseException as exc:
                failures.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=publisher, args=(k,)) for k in range(CONCURRENCY)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        return max(ended) - started[0]

    return run


# --- mqstore consumers -----------------------------------------------------------------------


def _prefill(workdir: str, n: int) -> None:
    """Untimed: n messages ready in the queue (concurrent, durability normal: quickest).
    Checked, because a consumer waiting for a message that was never published waits forever."""
    asyncio.run(_aio_publish(workdir, "normal", n))
    with mqstore.BlockingConnection(_params(workdir, "normal")) as conn:
        ready = conn.channel().queue_declare(QUEUE, passive=True).method.message_count
    if ready != n:
        raise RuntimeError(f"prefill left {ready} messages in {QUEUE!r}, expected {n}")


def consume_blocking(workdir: str, n: int) -> float:
    """basic_consume with prefetch 100; the callback acks each message on its own."""
    _prefill(workdir, n)
    with mqstore.BlockingConnection(_params(workdir, "full")) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=PREFETCH)
        count = 0

        def on_message(ch: mqstore.BlockingChannel, method, properties, payload) -> None:
            nonlocal count
            ch.basic_ack(method.delivery_tag)
            count += 1
            if count == n:
                ch.stop_consuming()

        channel.basic_consume(QUEUE, on_message)
        start = time.perf_counter()
        channel.start_consuming()
        return time.perf_counter() - start


async def aio_drain(path: str, n: int) -> float:
    """Seconds for one asyncio consumer (prefetch 100, ack each) to take ``n`` messages
    from the bench queue; compare.py's W2 uses it too."""
    conn = await mqstore.aio.connect(path, durability="full")
    try:
        channel = await conn.channel()
        await channel.basic_qos(prefetch_count=PREFETCH)
        count = 0
        start = time.perf_counter()
        async with contextlib.aclosing(channel.consume(QUEUE)) as deliveries:
            async for delivery in deliveries:
                await delivery.ack()
                count += 1
                if count == n:
                    break
        return time.perf_counter() - start
    finally:
        await conn.close()


def consume_aio(workdir: str, n: int) -> float:
    """``async for d in channel.consume(q): await d.ack()`` with prefetch 100."""
    _prefill(workdir, n)
    return asyncio.run(aio_drain(os.path.join(workdir, "mq.db"), n))


# --- cases, targets, measurement -------------------------------------------------------------


@dataclass
class Case:
    label: str
    run: Callable[[str, int], float]
    reference: str | None  # "FULL"/"NORMAL": the raw sqlite3 row its ratio is taken to
    target: str = "—"
    check: Callable[[float, float], bool] | None = None  # (msgs/s, ratio) -> pass
    provides: str | None = None  # set on the raw sqlite3 rows: the reference they are


@dataclass
class Result:
    case: Case
    n: int
    rates: list[float]
    # Each run's rate over its paired reference run's rate (cases with a reference).
    ratios: list[float] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def cases() -> list[Case]:
    durable_concurrent = ">= 20,000 msg/s"
    return [
        Case(
            "raw sqlite3 insert+commit, WAL, synchronous=FULL",
            raw_sqlite("FULL"),
            None,
            provides="FULL",
        ),
        Case(
            "raw sqlite3 insert+commit, WAL, synchronous=NORMAL",
            raw_sqlite("NORMAL"),
            None,
            provides="NORMAL",
        ),
        Case(
            "mqstore sequential publish, blocking, durability=full",
            seq_publish("full"),
            "FULL",
            ">= 70% of raw FULL",
            lambda rate, ratio: ratio >= 0.70,
        ),
        Case(
            "mqstore sequential publish, blocking, durability=normal",
            seq_publish("normal"),
            "NORMAL",
        ),
        Case(
            "mqstore 64 publishers, asyncio tasks, durability=full",
            aio_publish("full"),
            "FULL",
            durable_concurrent,
            lambda rate, ratio: rate >= 20_000,
        ),
        Case(
            "mqstore 64 publishers, asyncio tasks, durability=normal",
            aio_publish("normal"),
            "NORMAL",
        ),
        Case(
            "mqstore 64 publishers, threads, durability=full",
            thread_publish("full"),
            "FULL",
            durable_concurrent,
            lambda rate, ratio: rate >= 20_000,
        ),
        Case(
            "mqstore 64 publishers, threads, durability=normal", thread_publish("normal"), "NORMAL"
        ),
        Case(
            "mqstore consume+ack prefetch 100, blocking",
            consume_blocking,
            "NORMAL",  # acks commit with synchronous=NORMAL (see mqstore/engine.py)
            ">= 10,000 msg/s",
            lambda rate, ratio: rate >= 10_000,
        ),
        Case(
            "mqstore consume+ack prefetch 100, asyncio",
            consume_aio,
            "NORMAL",
            ">= 20,000 msg/s",
            lambda rate, ratio: rate >= 20_000,
        ),
    ]


def timed(case: Case, bench_dir: Path, n: int) -> float:
    """Seconds for one run of ``case`` in a fresh directory, removed afterwards."""
    workdir = tempfile.mkdtemp(prefix="bench-", dir=bench_dir)
    try:
        return case.run(workdir, n)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def round_n(n: float) -> int:
    """A multiple of the concurrency, so every publisher gets the same share."""
    return max(CONCURRENCY, int(n) // CONCURRENCY * CONCURRENCY)


def calibrate(case: Case, bench_dir: Path, probe_s: float, target_s: float, max_n: int) -> int:
    """Grow a probe run until it lasts ``probe_s``, then extrapolate to ``target_s``.
    The probes double as warm-up (imports, page cache, file system metadata)."""
    n = CONCURRENCY
    while True:
        elapsed = timed(case, bench_dir, n)
        if elapsed >= probe_s or n >= max_n:
            break
        n = min(max_n, n * (8 if elapsed < probe_s / 8 else 2))
    return min(max_n, round_n(n / elapsed * target_s))


def measure(case: Case, bench_dir: Path, quick: bool, reference: Result | None = None) -> Result:
    """RUNS runs of ``case``; with a ``reference``, each run right after one of it."""
    if quick:
        n = calibrate(case, bench_dir, probe_s=0.02, target_s=0.1, max_n=4096)
    else:
        n = calibrate(case, bench_dir, probe_s=0.3, target_s=1.5, max_n=200_000)
    rates: list[float] = []
    ratios: list[float] = []
    for _ in range(RUNS):
        if reference is not None:
            ref_rate = reference.n / timed(reference.case, bench_dir, reference.n)
        rates.append(n / timed(case, bench_dir, n))
        if reference is not None:
            ratios.append(rates[-1] / ref_rate)
    return Result(case, n, rates, ratios if reference is not None else None)


# --- sequential durable publish, interleaved with the reference ----------------------------


@dataclass
class Interleaved:
    slice_n: int
    slices: int
    raw_rate: float
    mq_rate: float
    slice_ratios: list[float]

    @property
    def ratio(self) -> float:
        return self.mq_rate / self.raw_rate


def interleaved(bench_dir: Path, slice_n: int, slices: int) -> Interleaved:
    """Sequential durable publish against raw sqlite3 in alternating slices of ``slice_n``
    commits on two open files in one directory: both sides meet the same disk moments, which
    paired runs seconds apart do not. A first WAL cycle on each file is left out (warm-up)."""
    workdir = tempfile.mkdtemp(prefix="bench-", dir=bench_dir)
    raw = raw_connection(workdir, "FULL")
    conn = mqstore.BlockingConnection(_params(workdir, "full"))
    try:
        channel = conn.channel()
        channel.queue_declare(QUEUE, durable=True)

        def raw_slice(n: int) -> float:
            return raw_commits(raw, n)

        def mq_slice(n: int) -> float:
            start = time.perf_counter()
            for i in range(n):
                channel.basic_publish("", QUEUE, body(i))
            return time.perf_counter() - start

        raw_slice(2000)
        mq_slice(2000)
        pairs = [(raw_slice(slice_n), mq_slice(slice_n)) for _ in range(slices)]
    finally:
        conn.close()
        raw.close()
        shutil.rmtree(workdir, ignore_errors=True)
    total = slice_n * slices
    return Interleaved(
        slice_n,
        slices,
        total / sum(r for r, _ in pairs),
        total / sum(m for _, m in pairs),
        [r / m for r, m in pairs],
    )


# --- machine and report ----------------------------------------------------------------------


def filesystem(path: Path) -> str:
    """The file system type of ``path``: the longest mount point in /proc/mounts above it."""
    real = str(path.resolve())
    best, fstype = "", "unknown"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return fstype
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, f"{fields[2]} ({fields[0]} on {mount})"
    return fstype


def machine(bench_dir: Path) -> list[tuple[str, str]]:
    return [
        ("CPUs", str(os.cpu_count())),
        ("Bench dir", str(bench_dir.resolve())),
        ("File system", filesystem(bench_dir)),
        ("SQLite", sqlite3.sqlite_version),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("Platform", platform.platform()),
        ("mqstore", mqstore.__version__),
    ]


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def table(results: list[Result]) -> str:
    head = (
        "| Case | N | msgs/s (median) | min | max | vs raw sqlite3 (paired runs: median, "
        "min-max) | Target | Pass |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---|:---:|"]
    for r in results:
        ratio = statistics.median(r.ratios) if r.ratios else 1.0
        vs = "reference"
        if r.ratios:
            vs = f"{ratio:.2f}x {r.case.reference} ({min(r.ratios):.2f}-{max(r.ratios):.2f})"
        verdict = "—"
        if r.case.check is not None:
            verdict = "PASS" if r.case.check(r.median, ratio) else "FAIL"
        lines.append(
            f"| {r.case.label} | {r.n:,} | {fmt_rate(r.median)} | {fmt_rate(min(r.rates))} "
            f"| {fmt_rate(max(r.rates))} | {vs} | {r.case.target} | {verdict} |"
        )
    return "\n".join(lines)


def report(
    results: list[Result], bench_dir: Path, quick: bool, mixed: Interleaved | None = None
) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick (smoke test: tiny N, figures not meaningful)" if quick else "full"
    parts = [
        "# mqstore core benchmark",
        "",
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}` — {when}, mode: {mode}",
        "",
        *[f"- {key}: {value}" for key, value in machine(bench_dir)],
        "",
        f"Median of {RUNS} runs; {BODY_SIZE}-byte random bodies. Each mqstore run is paired "
        "with a run of the raw sqlite3 reference of the same durability just before it; the "
        "ratio is the median of the pairwise ratios (consume+ack is compared with NORMAL: "
        "acks commit with synchronous=NORMAL).",
        "",
        table(results),
        "",
    ]
    if mixed is not None:
        parts += [
            f"Sequential durable publish, interleaved with raw sqlite3 FULL in {mixed.slices} "
            f"alternating slices of {mixed.slice_n:,} commits on open files (same disk moments "
            f"for both): raw {fmt_rate(mixed.raw_rate)}/s, mqstore {fmt_rate(mixed.mq_rate)}/s, "
            f"**{mixed.ratio:.2f}x** (slices {min(mixed.slice_ratios):.2f}-"
            f"{max(mixed.slice_ratios):.2f}).",
            "",
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny N: a smoke test")
    parser.add_argument(
        "--dir", type=Path, default=RESULTS, help="where the databases go (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for key, value in machine(args.dir):
        print(f"{key}: {value}", file=sys.stderr)
    results = []
    references: dict[str, Result] = {}
    for case in cases():
        print(f"… {case.label}", file=sys.stderr, flush=True)
        reference = references.get(case.reference) if case.reference else None
        results.append(measure(case, args.dir, args.quick, reference))
        if case.provides:
            references[case.provides] = results[-1]
        print(f"  {fmt_rate(results[-1].median)} msgs/s", file=sys.stderr, flush=True)
    print("… sequential durable publish interleaved with raw sqlite3", file=sys.stderr)
    mixed = interleaved(args.dir, 50 if args.quick else 500, 4 if args.quick else 30)
    print(f"  {mixed.ratio:.2f}x raw FULL", file=sys.stderr, flush=True)
    text = report(results, args.dir, args.quick, mixed)
    (RESULTS / "core.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {RESULTS / 'core.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
