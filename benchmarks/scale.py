#!/usr/bin/env python3
"""How mqstore holds at scale: deep queues, many queues, fanout, disk reuse (issue 6).

    .venv/bin/python benchmarks/scale.py [--quick] [--dir DIR] [--only depth,queues,fanout,disk]

Longer than benchmarks/compare.py (a full run takes several minutes and ~4 GB of disk for the
10,000,000-message file); ``--quick`` uses smaller sizes (about 1-2 minutes). Everything runs
on the repository's disk (a temporary directory under ``benchmarks/results/`` unless ``--dir``),
through mqstore's public API except where a bulk fill is said to be used. Prints a table and
writes ``benchmarks/results/scale.md``.

Sections:

- **depth**: publish and consume rates with 0, 1,000,000 and (not with ``--quick``)
  10,000,000 messages already in the queue. The deep queue is built by a *bulk insert into the
  schema*: with the broker closed, a plain sqlite3 connection (synchronous=OFF) runs
  ``INSERT INTO mq_entries .. SELECT .. FROM`` a recursive CTE (``randomblob(256)`` bodies),
  1,000,000 rows per transaction: the same rows mqstore's publish path writes for a message
  routed to one queue (the message inline in its entry, sql.PUBLISH_DEFAULT_PLAIN), at
  SQLite speed. Each depth is then measured in a fresh child process
  (so its memory is the broker's alone): time to open the file, sequential blocking publish
  (durability "normal", so fsync noise does not hide index costs; "full" is shown too),
  consume+ack with prefetch 100 from the head of the queue, and the process's VmRSS/VmHWM
  from /proc/self/status.
- **queues**: 10,000 queues (``--quick``: 1,000) each bound with its own key ``q.<i>.*`` to
  one topic exchange; sequential publish (durability "normal") of a message matching exactly
  one queue, against the same exchange with one bound queue.
- **fanout**: one message to 1,000 queues bound to a fanout exchange (``--quick``: 200): its
  publish time (one transaction, durability "full") and the bytes it adds to the database
  (used pages before/after), compared with the body stored per queue.
- **disk**: file size (database + WAL, after a checkpoint) before, after filling one queue
  with 1,000,000 messages (``--quick``: 100,000; bulk fill as above), after draining it
  through mqstore (consume+ack), and after filling it again: are free pages reused, does the
  file shrink? (mqstore runs no VACUUM and no auto_vacuum yet.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import fmt_rate, machine

import mqstore

logging.getLogger("mqstore.wal").setLevel(logging.ERROR)  # one WAL-reset warning per process

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
QUEUE = "deep"
BODY = os.urandom(256)
BULK_TXN = 1_000_000
CONCURRENCY = 64


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def file_bytes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(path + suffix)
    return total


def checkpoint(path: str) -> None:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.close()


def page_stats(path: str) -> tuple[int, int, int]:
    """(page_size, page_count, freelist_count) as a reader sees the committed state."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        size = db.execute("PRAGMA page_size").fetchone()[0]
        count = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return size, count, free
    finally:
        db.close()


def params(path: str, durability: str = "full") -> mqstore.ConnectionParameters:
    return mqstore.ConnectionParameters(path=path, durability=durability)


def declare(path: str, queue: str = QUEUE) -> None:
    with mqstore.BlockingConnection(params(path)) as conn:
        conn.channel().queue_declare(queue, durable=True)


def bulk_fill(path: str, queue: str, count: int) -> float:
    """Bulk insert ``count`` ready messages into ``queue`` (broker closed); returns seconds."""
    start = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        db.execute("PRAGMA synchronous=OFF")
        queue_id = db.execute("SELECT id FROM mq_queues WHERE name = ?", (queue,)).fetchone()[0]
        now = int(time.time() * 1000)
        done = 0
        while done < count:
            k = min(BULK_TXN, count - done)
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                "INSERT INTO mq_entries (queue_id, priority, exchange, routing_key, properties, "
                "body, published_at_ms, amqp_properties) "
                "SELECT ?, 0, '', ?, NULL, randomblob(256), ?, NULL FROM c",
                (k, queue_id, queue, now),
            )
            db.execute("COMMIT")
            done += k
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.close()
    return time.perf_counter() - start


def publish_rate(channel: Any, exchange: str, key: str, n: int, budget_s: float = 5.0) -> float:
    """Publish ``n`` messages, or fewer if that takes longer than ``budget_s``."""
    start = time.perf_counter()
    done = 0
    while done < n:
        channel.basic_publish(exchange, key, BODY)
        done += 1
        if done % 10 == 0 and time.perf_counter() - start > budget_s:
            break
    return done / (time.perf_counter() - start)


def consume_rate(channel: Any, queue: str, n: int) -> float:
    channel.basic_qos(prefetch_count=100)
    count = 0
    start = time.perf_counter()
    for method, _props, _body in channel.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        count += 1
        if count >= n:
            break
    elapsed = time.perf_counter() - start
    channel.cancel()
    if count < n:
        raise RuntimeError(f"consumed {count} of {n}")
    return n / elapsed


# --- depth -----------------------------------------------------------------------------------


def _depth_child(path: str, n_pub: int, n_pub_full: int, n_con: int, out: Any) -> None:
    try:
        t0 = time.perf_counter()
        conn = mqstore.BlockingConnection(params(path, "normal"))
        open_s = time.perf_counter() - t0
        ch = conn.channel()
        pub_normal = [publish_rate(ch, "", QUEUE, n_pub) for _ in range(3)]
        # (the depth drifts by what was published and consumed here: a few thousand)
        conn.close()
        with mqstore.BlockingConnection(params(path, "full")) as full:
            pub_full = [publish_rate(full.channel(), "", QUEUE, n_pub_full) for _ in range(3)]
        with mqstore.BlockingConnection(params(path, "full")) as cons:
            con = [consume_rate(cons.channel(), QUEUE, n_con) for _ in range(3)]
        out.put(
            dict(
                open_s=open_s,
                pub=statistics.median(pub_normal),
                pub_full=statistics.median(pub_full),
                con=statistics.median(con),
                rss_mb=status_kb("VmRSS") / 1024,
                hwm_mb=status_kb("VmHWM") / 1024,
                error=None,
            )
        )
    except BaseException as exc:
        import traceback

        out.put(dict(error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def depth(bench: Path, quick: bool) -> list[dict[str, Any]]:
    depths = [0, 1_000_000] if quick else [0, 1_000_000, 10_000_000]
    n_pub, n_pub_full, n_con = (2000, 300, 2000) if quick else (5000, 1000, 5000)
    path = str(bench / "depth.db")
    declare(path)
    rows = []
    have = 0
    ctx = multiprocessing.get_context("spawn")
    for d in depths:
        fill_s = bulk_fill(path, QUEUE, d - have) if d > have else 0.0
        have = d
        print(f"  depth {d:,}: filled in {fill_s:.1f}s, measuring …", file=sys.stderr, flush=True)
        out = ctx.Queue()
        proc = ctx.Process(target=_depth_child, args=(path, n_pub, n_pub_full, n_con, out))
        proc.start()
        res = out.get(timeout=3600)
        proc.join()
        if res["error"]:
            raise RuntimeError(res["error"])
        # The child published 3 * (n_pub + n_pub_full) and consumed 3 * n_con: the queue
        # drifted a little from ``d``; keep the intended depth for the label.
        have += 3 * (n_pub + n_pub_full) - 3 * n_con
        res.update(depth=d, fill_s=fill_s, file_mb=file_bytes(path) / 2**20)
        rows.append(res)
        print(
            f"    open {res['open_s']:.2f}s publish {fmt_rate(res['pub'])}/s "
            f"(full {fmt_rate(res['pub_full'])}/s) consume {fmt_rate(res['con'])}/s "
            f"RSS {res['rss_mb']:.0f} MB HWM {res['hwm_mb']:.0f} MB",
            file=sys.stderr,
            flush=True,
        )
    return rows


# --- many queues -----------------------------------------------------------------------------


async def _declare_bound(path: str, exchange: str, kind: str, names: list[str], keys: list[str]):
    conn = await mqstore.aio.connect(path, durability="normal")
    try:
        channels = [await conn.channel() for _ in range(CONCURRENCY)]
        await channels[0].exchange_declare(exchange, kind, durable=True)

        async def work(ch: Any, k: int) -> None:
            for i in range(k, len(names), CONCURRENCY):
                await ch.queue_declare(names[i], durable=True)
                await ch.queue_bind(names[i], exchange, keys[i])

        await asyncio.gather(*(work(ch, k) for k, ch in enumerate(channels)))
    finally:
        await conn.close()


def many_queues(bench: Path, quick: bool) -> dict[str, Any]:
    count = 1_000 if quick else 10_000
    n = 500 if quick else 1000
    one = str(bench / "one.db")
    many = str(bench / "many.db")
    asyncio.run(_declare_bound(one, "topic", "topic", ["q.0"], ["q.0.*"]))
    t0 = time.perf_counter()
    names = [f"q.{i}" for i in range(count)]
    asyncio.run(_declare_bound(many, "topic", "topic", names, [f"{q}.*" for q in names]))
    setup_s = time.perf_counter() - t0
    rates = {}
    for label, path, key in (
        ("topic, 1 binding", one, "q.0.x"),
        (f"topic, {count:,} bindings, matches 1", many, f"q.{count // 2}.x"),
        (f"default exchange, {count:,} queues", many, f"q.{count // 2}"),
    ):
        with mqstore.BlockingConnection(params(path, "normal")) as conn:
            ch = conn.channel()
            if label.startswith("topic"):
                publish_rate(ch, "topic", key, 20, budget_s=1.0)  # warm-up
            vals = [
                publish_rate(ch, "topic" if label.startswith("topic") else "", key, n)
                for _ in range(3)
            ]
            rates[label] = statistics.median(vals)
        print(f"  {label}: {fmt_rate(rates[label])}/s", file=sys.stderr, flush=True)
    # Every queue got its message: q.<count//2> has 3n + 50 from the topic rows, 3n direct.
    return dict(count=count, setup_s=setup_s, rates=rates)


# --- fanout ----------------------------------------------------------------------------------


def fanout(bench: Path, quick: bool) -> dict[str, Any]:
    count = 200 if quick else 1_000
    path = str(bench / "fanout.db")
    names = [f"f.{i}" for i in range(count)]
    asyncio.run(_declare_bound(path, "fan", "fanout", names, [""] * count))
    publishes = 10 if quick else 20
    times = []
    size, pages0, free0 = page_stats(path)
    with mqstore.BlockingConnection(params(path, "full")) as conn:
        ch = conn.channel()
        for _ in range(publishes):
            t0 = time.perf_counter()
            ch.basic_publish("fan", "", BODY)
            times.append(time.perf_counter() - t0)
        ready = ch.queue_declare(names[-1], passive=True).method.message_count
    size, pages1, free1 = page_stats(path)
    used = ((pages1 - free1) - (pages0 - free0)) * size / publishes
    db = sqlite3.connect(path)
    messages = db.execute("SELECT count(*) FROM mq_messages").fetchone()[0]
    entries = db.execute("SELECT count(*) FROM mq_entries").fetchone()[0]
    db.close()
    return dict(
        count=count,
        publishes=publishes,
        ms=statistics.median(times) * 1000,
        ms_min=min(times) * 1000,
        ms_max=max(times) * 1000,
        bytes_per_publish=used,
        messages=messages,
        entries=entries,
        ready_last=ready,
    )


# --- disk ------------------------------------------------------------------------------------


def drain(path: str, expected: int) -> float:
    with mqstore.BlockingConnection(params(path, "full")) as conn:
        t0 = time.perf_counter()
        rate = consume_rate(conn.channel(), QUEUE, expected)
        del t0
    return rate


def disk(bench: Path, quick: bool) -> dict[str, Any]:
    count = 100_000 if quick else 1_000_000
    path = str(bench / "disk.db")
    declare(path)
    checkpoint(path)
    rows = []

    def snap(label: str) -> None:
        checkpoint(path)
        size, pages, free = page_stats(path)
        rows.append((label, file_bytes(path), pages, free, size))
        print(f"  {label}: {file_bytes(path) / 2**20:.1f} MB, {free} free pages", file=sys.stderr)

    snap("empty queue")
    bulk_fill(path, QUEUE, count)
    snap(f"after filling {count:,}")
    rate = drain(path, count)
    time.sleep(1.0)  # let upkeep/checkpointer settle
    snap("after draining (consume+ack)")
    bulk_fill(path, QUEUE, count)
    snap(f"after filling {count:,} again")
    drain(path, count)
    snap("after draining again")
    return dict(count=count, rows=rows, drain_rate=rate)


# --- report ----------------------------------------------------------------------------------


def report(res: dict[str, Any], bench: Path, quick: bool, load: tuple[str, str]) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# mqstore at scale (issue 6)",
        "",
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}` — {when}, "
        f"mode: {'quick (smaller sizes)' if quick else 'full'}",
        "",
        *[f"- {k}: {v}" for k, v in machine(bench)],
        f"- Load average at start / end: {load[0]} / {load[1]}",
        "",
    ]
    if "depth" in res:
        rows = res["depth"]
        base = rows[0]
        out += [
            "## Queue depth",
            "",
            "Publish: sequential blocking `basic_publish` (durability normal; full in "
            "brackets). Consume: prefetch 100, ack each. Each in a fresh process; memory is "
            "that process's. Target: rates within 80% of the empty queue's, RSS < 150 MB.",
            "",
            "| Messages queued | file MB | open s | publish/s (normal) | vs empty | "
            "publish/s (full) | consume+ack/s | vs empty | VmRSS MB | VmHWM MB | Pass |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for r in rows:
            pr, cr = r["pub"] / base["pub"], r["con"] / base["con"]
            ok = pr >= 0.8 and cr >= 0.8 and r["rss_mb"] < 150 and r["hwm_mb"] < 150
            out.append(
                f"| {r['depth']:,} | {r['file_mb']:,.0f} | {r['open_s']:.2f} "
                f"| {fmt_rate(r['pub'])} | {pr:.0%} | {fmt_rate(r['pub_full'])} "
                f"| {fmt_rate(r['con'])} | {cr:.0%} | {r['rss_mb']:.0f} | {r['hwm_mb']:.0f} "
                f"| {'PASS' if ok else 'FAIL'} |"
            )
        out.append("")
    if "queues" in res:
        q = res["queues"]
        rates = q["rates"]
        base = next(iter(rates.values()))
        out += [
            "## Many queues",
            "",
            f"{q['count']:,} queues, each bound with its own key `q.<i>.*` to one topic "
            f"exchange (declared and bound in {q['setup_s']:.1f}s through the asyncio API). "
            "Sequential publish, durability normal. Target: matching 1 of them within 50% "
            "of the single-binding rate.",
            "",
            "| Case | publish/s | vs 1 binding |",
            "|---|---:|---:|",
        ]
        for label, rate in rates.items():
            out.append(f"| {label} | {fmt_rate(rate)} | {rate / base:.0%} |")
        out.append("")
    if "fanout" in res:
        f = res["fanout"]
        out += [
            "## Fanout",
            "",
            f"One 256-byte message to {f['count']:,} queues bound to a fanout exchange, "
            f"durability full, {f['publishes']} publishes.",
            "",
            "| publish ms (median, min-max) | bytes added per publish | body x queues | "
            "mq_messages rows | mq_entries rows |",
            "|---:|---:|---:|---:|---:|",
            f"| {f['ms']:.1f} ({f['ms_min']:.1f}-{f['ms_max']:.1f}) "
            f"| {f['bytes_per_publish']:,.0f} | {256 * f['count']:,} | {f['messages']:,} "
            f"| {f['entries']:,} |",
            "",
        ]
    if "disk" in res:
        d = res["disk"]
        first = d["rows"][0][1]
        out += [
            "## Disk",
            "",
            f"One queue filled with {d['count']:,} messages (bulk), drained through mqstore "
            f"(consume+ack, {fmt_rate(d['drain_rate'])}/s), filled and drained again. Sizes "
            "after `PRAGMA wal_checkpoint(TRUNCATE)`.",
            "",
            "| Step | file MB (db + wal) | vs start | pages | free pages |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, size, pages, free, _ in d["rows"]:
            out.append(
                f"| {label} | {size / 2**20:,.1f} | {size / first:.1f}x | {pages:,} | {free:,} |"
            )
        out.append("")
    return "\n".join(out)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--dir", type=Path, default=None, help="bench dir (default: temp dir)")
    parser.add_argument("--only", default="", help="comma-separated: depth,queues,fanout,disk")
    parser.add_argument("--out", default="scale", help="results/<out>.md")
    opts = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    own = opts.dir is None
    bench = Path(tempfile.mkdtemp(prefix="scale-", dir=RESULTS)) if own else opts.dir
    bench.mkdir(parents=True, exist_ok=True)
    for k, v in machine(bench):
        print(f"{k}: {v}", file=sys.stderr)
    load = loadavg()
    only = {s.strip() for s in opts.only.split(",") if s.strip()}
    sections = {"depth": depth, "queues": many_queues, "fanout": fanout, "disk": disk}
    res: dict[str, Any] = {}
    try:
        for name, fn in sections.items():
            if only and name not in only:
                continue
            print(f"… {name}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            res[name] = fn(bench, opts.quick)
            print(f"  [{time.perf_counter() - t0:.1f}s]", file=sys.stderr, flush=True)
    finally:
        if own:
            shutil.rmtree(bench, ignore_errors=True)
    text = report(res, bench, opts.quick, (load, loadavg()))
    (RESULTS / f"{opts.out}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
