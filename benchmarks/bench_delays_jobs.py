#!/usr/bin/env python3
"""Delayed-message firing accuracy under load, and the job layer's throughput.

    .venv/bin/python benchmarks/bench_delays_jobs.py [--quick] [--dir DIR]

1. **Delay lateness**: N messages published with random delays of 0.1-2 s while a publisher
   thread keeps a second queue busy; a consumer records how late each one arrived after its
   due time (p50, p99, max, in ms).
2. **Jobs tasks/s**: M no-op tasks enqueued, then ``mqstore worker --concurrency 4`` (4
   processes) runs them in ``--burst`` mode; tasks per second of the worker run.
3. **Dead-lettering rate**: (a) D messages consumed (prefetch 100) and each rejected without
   requeue from a queue with a dead-letter exchange: messages/s from the first delivery to all
   D in the dead-letter queue; (b) D messages expiring by ``x-message-ttl`` into a dead-letter
   queue: messages/s from the earliest moment any of them could expire (before the first
   publish + TTL) to all D in the dead-letter queue, moved by the connection's upkeep thread.
   Both verify every message arrived (and carries ``x-death`` with the right reason).

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
    late: list[float] = []
    ready = threading.Event()

    def consume() -> None:
        # Waiting before the first publish: lateness is then firing accuracy, not the time
        # the publishing loop took.
        with mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path)) as c:
            cch = c.channel()
            ready.set()
            for _method, _props, body in cch.consume(
                "delayed", auto_ack=True, inactivity_timeout=5
            ):
                if body is None:
                    break
                late.append((time.time() - due[body.decode()]) * 1000)
                if len(late) == count:
                    break

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    ready.wait()
    for i in range(count):
        delay = random.uniform(0.1, 2.0)
        due[str(i)] = time.time() + delay
        ch.basic_publish("", "delayed", str(i), delay=delay)
    consumer.join()
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


DLQ_ARGS = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}
#: Safety bound for the dead-letter queue to fill; the benchmark fails past it.
DLQ_DEADLINE_S = 120.0


def publish_many(ch: mqstore.BlockingChannel, queue: str, count: int) -> None:
    """``count`` small messages, 500 per transaction (one commit each)."""
    for start in range(0, count, 500):
        with ch.transaction():
            for i in range(start, min(start + 500, count)):
                ch.basic_publish("", queue, str(i))


def wait_for_count(ch: mqstore.BlockingChannel, queue: str, count: int) -> float:
    """Poll the queue's ready count every 5 ms; time.monotonic() when it reached ``count``."""
    deadline = time.monotonic() + DLQ_DEADLINE_S
    while True:
        ready = ch.queue_declare(queue, passive=True).method.message_count
        if ready >= count:
            assert ready == count, f"{queue}: {ready} messages, expected {count}"
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"{queue}: only {ready} of {count} after {DLQ_DEADLINE_S} s")
        time.sleep(0.005)


def check_dead_lettered(ch: mqstore.BlockingChannel, source: str, count: int, reason: str) -> None:
    """Source empty, ``dlq`` holds all ``count`` bodies once each, each with its x-death."""
    assert ch.queue_declare(source, passive=True).method.message_count == 0
    bodies = []
    while True:
        method, props, body = ch.basic_get("dlq", auto_ack=True)
        if method is None:
            break
        death = props.headers["x-death"][0]
        assert (death["reason"], death["queue"]) == (reason, source), death
        bodies.append(int(body))
    assert sorted(bodies) == list(range(count)), f"{len(bodies)} of {count} in the DLQ"


def dead_letter_rates(path: str, count: int, ttl_ms: int) -> dict[str, float]:
    conn = mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path))
    ch = conn.channel()
    ch.queue_declare("dlq")

    # (a) consumed and rejected without requeue, one basic_reject per message.
    ch.queue_declare("rejects", arguments=DLQ_ARGS)
    publish_many(ch, "rejects", count)
    ch.basic_qos(prefetch_count=100)
    started = None
    rejected = 0
    for method, _props, _body in ch.consume("rejects", inactivity_timeout=10):
        assert method is not None, f"consumer starved after {rejected} of {count}"
        if started is None:
            started = time.monotonic()
        ch.basic_reject(method.delivery_tag, requeue=False)
        rejected += 1
        if rejected == count:
            break
    ch.cancel()
    assert started is not None
    reject_rate = count / (wait_for_count(ch, "dlq", count) - started)
    check_dead_lettered(ch, "rejects", count, "rejected")

    # (b) expired by x-message-ttl; the TTL leaves room to publish them all first.
    ch.queue_declare("expires", arguments={**DLQ_ARGS, "x-message-ttl": ttl_ms})
    before = time.monotonic()
    publish_many(ch, "expires", count)
    published = time.monotonic()
    done = wait_for_count(ch, "dlq", count)
    expiry_rate = count / (done - (before + ttl_ms / 1000))
    check_dead_lettered(ch, "expires", count, "expired")
    conn.close()
    return {
        "n": count,
        "reject_rate": reject_rate,
        "expiry_rate": expiry_rate,
        "ttl_ms": ttl_ms,
        "publish_s": published - before,
        "last_lag_ms": (done - (published + ttl_ms / 1000)) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", default=str(ROOT / "results"))
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    n_delays, n_tasks, n_dead = (500, 2000, 1000) if args.quick else (5000, 20000, 10000)
    ttl_ms = 1000 if args.quick else 3000
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        late = delay_lateness(str(Path(tmp) / "delays.db"), n_delays)
        rate = jobs_rate(Path(tmp), str(Path(tmp) / "jobs.db"), n_tasks)
        dead = dead_letter_rates(str(Path(tmp) / "dead.db"), n_dead, ttl_ms)
    table = (
        "| Measure | Value |\n|---|---|\n"
        f"| delayed messages fired (under a busy publisher) | {late['n']} |\n"
        f"| lateness p50 | {late['p50']:.1f} ms |\n"
        f"| lateness p99 | {late['p99']:.1f} ms |\n"
        f"| lateness max | {late['max']:.1f} ms |\n"
        f"| jobs: no-op tasks/s, 4 worker processes | {rate:.0f} |\n"
        f"| dead-lettering: {dead['n']} consumed and rejected (requeue=False) into a DLQ "
        f"| {dead['reject_rate']:.0f} msgs/s |\n"
        f"| dead-lettering: {dead['n']} expired (x-message-ttl {dead['ttl_ms']} ms) into a DLQ "
        f"| {dead['expiry_rate']:.0f} msgs/s (all in the DLQ "
        f"{dead['last_lag_ms']:.0f} ms after the last publish's TTL ran out) |\n"
    )
    print(table)
    (Path(args.dir) / "delays_jobs.md").write_text(table)


if __name__ == "__main__":
    main()
