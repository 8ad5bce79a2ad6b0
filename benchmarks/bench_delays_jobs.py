#!/usr/bin/env python3
"""Delayed-message firing accuracy under load, and the job layer's throughput.

    .venv/bin/python benchmarks/bench_delays_jobs.py [--quick] [--dir DIR]

1. **Delay lateness**: N messages published with random delays of 0.1-2 s while a publisher
   thread keeps a second queue busy; a consumer records how late each one arrived after its
   due time (p50, p99, max, in ms).
2. **Jobs tasks/s**: M no-op tasks enqueued, then ``mqstore worker --concurrency 4`` (4
   processes) runs them in ``--burst`` mode; tasks per second of the worker run.

Printed, and written as Markdown to ``benchmarks/results/delays_jobs.md``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import mqstore

ROOT = Path(__file__).resolve().parent


def delay_lateness(path: str, count: int) -> dict[str, float]:
    conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path))
    ch = conn.channel()
    ch.queue_declare("delayed")
    ch.queue_declare("noise")
    stop = threading.Event()

    def noise() -> None:
        with mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path)) as c:
            nch = c.channel()
            while not stop.is_set():
                nch.basic_publish("", "noise", b"x" * 100)

    thread = threading.Thread(target=noise, daemon=True)
    thread.start()
    due: dict[str, float] = {}
    for i in range(count):
        delay = random.uniform(0.1, 2.0)
        due[str(i)] = time.time() + delay
        ch.basic_publish("", "delayed", str(i), delay=delay)
    late = []
    for _method, _props, body in ch.consume("delayed", auto_ack=True, inactivity_timeout=5):
        if body is None:
            break
        late.append((time.time() - due[body.decode()]) * 1000)
        if len(late) == count:
            break
    stop.set()
    thread.join()
    conn.close()
    late.sort()
    return {
        "p50": statistics.median(late),
        "p99": late[int(len(late) * 0.99) - 1],
        "max": late[-1],
        "n": len(late),
    }


TASKS = """
import mqstore.jobs
app = mqstore.jobs.App({path!r}, durability="normal")

@app.task
def noop(i):
    return i
"""


def jobs_rate(directory: Path, path: str, count: int) -> float:
    (directory / "bench_tasks.py").write_text(textwrap.dedent(TASKS.format(path=path)))
    sys.path.insert(0, str(directory))
    import bench_tasks  # type: ignore[import-not-found]

    for i in range(count):
        bench_tasks.noop.delay(i)
    bench_tasks.app.close()
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "mqstore", "worker", "bench_tasks:app", "-c", "4", "--burst"],
        cwd=directory,
        check=True,
    )
    return count / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", default=str(ROOT / "results"))
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    n_delays, n_tasks = (500, 2000) if args.quick else (5000, 20000)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        late = delay_lateness(str(Path(tmp) / "delays.db"), n_delays)
        rate = jobs_rate(Path(tmp), str(Path(tmp) / "jobs.db"), n_tasks)
    table = (
        "| Measure | Value |\n|---|---|\n"
        f"| delayed messages fired (under a busy publisher) | {late['n']} |\n"
        f"| lateness p50 | {late['p50']:.1f} ms |\n"
        f"| lateness p99 | {late['p99']:.1f} ms |\n"
        f"| lateness max | {late['max']:.1f} ms |\n"
        f"| jobs: no-op tasks/s, 4 worker processes | {rate:.0f} |\n"
    )
    print(table)
    (Path(args.dir) / "delays_jobs.md").write_text(table)


if __name__ == "__main__":
    main()
