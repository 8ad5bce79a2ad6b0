#!/usr/bin/env python3
"""Profile mqstore's hot paths with py-spy and print where the time goes.

    .venv/bin/python benchmarks/profile_hot_paths.py [publish|consume|batch|threads ...]

Each workload runs in a child process under ``py-spy record`` (sampling at 2 kHz, raw
collapsed stacks); the samples of the workload's threads are summed by the line they were
on (self time) and the top lines printed, skipping threads that only wait (locks, epoll).
The summaries are written to ``benchmarks/results/profiles/<workload>.txt``. py-spy is in
``benchmarks/requirements.txt``; it needs ptrace, so run as root or with
``kernel.yama.ptrace_scope=0``.

Workloads (durability full, 256-byte bodies, a fresh file in a temporary directory):

- ``publish``: sequential ``basic_publish`` from one thread (W1).
- ``consume``: asyncio consume + ack with prefetch 100 of pre-published messages (W2).
- ``batch``: ``basic_publish_batch`` of 100 bodies (W3).
- ``threads``: 64 threads publishing at once (group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "profiles"
BODIES = [os.urandom(256) for _ in range(1024)]
# Leaf frames of a thread that waits: not work, left out of the summary.
IDLE = (
    "Condition.wait",
    "Event.wait",
    "Barrier.wait",
    "select (",
    "EpollSelector.select",
    "_worker (concurrent",
    "Engine.run (mqstore/engine.py",
    "Wake.wait",
    "join (",
    "WakeListener._loop",
    "Thread._wait_for_tstate_lock",
)
WORKLOADS = ("publish", "consume", "batch", "threads")


def _connect(path: str) -> Any:
    """mqstore is imported here, in the profiled child: the parent needs none of it."""
    import mqstore

    return mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path))


def publish(path: str, n: int = 20_000) -> None:
    with _connect(path) as conn:
        channel = conn.channel()
        channel.queue_declare("q")
        for i in range(n):
            channel.basic_publish("", "q", BODIES[i % 1024])


def batch(path: str, n: int = 300_000) -> None:
    with _connect(path) as conn:
        channel = conn.channel()
        channel.queue_declare("q")
        for k in range(0, n, 100):
            channel.basic_publish_batch("", "q", [BODIES[(k + i) % 1024] for i in range(100)])


def threads(path: str, n: int = 40_000) -> None:
    with _connect(path) as conn:
        conn.channel().queue_declare("q")

    def publisher(k: int) -> None:
        with _connect(path) as conn:
            channel = conn.channel()
            for i in range(k, n, 64):
                channel.basic_publish("", "q", BODIES[i % 1024])

    workers = [threading.Thread(target=publisher, args=(k,)) for k in range(64)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


CONSUME_N = 60_000


def prefill(path: str, n: int = CONSUME_N) -> None:
    """Before ``consume`` is profiled (in the parent, not sampled)."""
    with _connect(path) as conn:
        channel = conn.channel()
        channel.queue_declare("q")
        for k in range(0, n, 100):
            channel.basic_publish_batch("", "q", [BODIES[(k + i) % 1024] for i in range(100)])


def consume(path: str, n: int = CONSUME_N) -> None:
    import mqstore.aio

    async def drain() -> None:
        connection = await mqstore.aio.connect(path)
        try:
            channel = await connection.channel()
            await channel.basic_qos(prefetch_count=100)
            seen = 0
            async for delivery in channel.consume("q"):
                await delivery.ack()
                seen += 1
                if seen == n:
                    break
        finally:
            await connection.close()

    asyncio.run(drain())


def summarize(raw: Path, top: int = 30) -> str:
    """Self time by line over every sampled stack that is not idle waiting."""
    by_line: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(marker in stack for marker in ("importlib", "alembic", "sqlalchemy")):
            continue  # start-up: imports and the migration
        if not frames[-1].strip() or frames[-1].startswith(IDLE):
            continue  # no Python frame (a thread in C), or waiting
        by_line[frames[-1]] += int(count)
        total += int(count)
    rows = [f"{n / total:6.1%}  {frame}" for frame, n in by_line.most_common(top)]
    return f"{total} busy samples\n" + "\n".join(rows) + "\n"


def profile(workload: str) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        if workload == "consume":
            prefill(os.path.join(tmp, "mq.db"))
        raw = Path(tmp) / "stacks.txt"
        cmd = [
            spy,
            "record",
            "-r",
            "2000",
            "-f",
            "raw",
            "-o",
            str(raw),
            "--",
            sys.executable,
            __file__,
            "--run",
            workload,
            "--dir",
            tmp,
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        return summarize(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workloads", nargs="*", help=f"any of {', '.join(WORKLOADS)} (all)")
    parser.add_argument("--run", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:  # the child py-spy samples
        globals()[args.run](os.path.join(args.dir, "mq.db"))
        return 0
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    OUT.mkdir(parents=True, exist_ok=True)
    for workload in args.workloads or WORKLOADS:
        text = f"# {workload} (py-spy, self time by line)\n\n" + profile(workload)
        (OUT / f"{workload}.txt").write_text(text, encoding="utf-8")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
