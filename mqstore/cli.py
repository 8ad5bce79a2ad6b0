"""The ``mqstore`` command: a demonstration and a few operator commands.

Deliberately thin: every command goes through the public blocking API, so what it shows is
what an application gets. The only exception is ``queues``, which reads queue *names* from a
read-only SQLite connection because the AMQP model has no "list queues" method; the counts
still come from passive ``queue_declare``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mqstore

DESCRIPTION = "mqstore: RabbitMQ's messaging model in one SQLite file."
DEMO_QUEUE = "demo-jobs"
DEMO_DEADLINE_S = 10.0  # plus JOB_SECONDS per job: one worker may end up doing them all
JOB_SECONDS = 0.3


def _connect(path: str, must_exist: bool = True) -> mqstore.BlockingConnection:
    """Open the broker; operator commands refuse a missing file rather than silently
    creating an empty broker because of a typo in ``--db``."""
    if must_exist and not os.path.exists(path):
        raise SystemExit(f"mqstore: no broker file at {path!r}")
    return mqstore.BlockingConnection(mqstore.ConnectionParameters(path=path))


def _note(text: str) -> None:
    """Details go to stderr, so stdout carries only data (a body, a table)."""
    print(text, file=sys.stderr)


# --- operator commands -----------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish with mandatory=True: a message no queue takes would otherwise vanish
    silently, which is never what someone typing this command wants."""
    with _connect(args.db) as conn:
        conn.channel().basic_publish(args.exchange, args.routing_key, args.body, mandatory=True)
    size = len(args.body.encode())
    _note(f"published {size} bytes to exchange {args.exchange!r} key {args.routing_key!r}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    """Body on stdout (so it can be piped), details on stderr. Without --ack the message
    goes back to the queue when the connection closes, marked redelivered."""
    with _connect(args.db) as conn:
        channel = conn.channel()
        method, _, body = channel.basic_get(args.queue)
        if method is None:
            _note(f"queue {args.queue!r} is empty")
            return 0
        if args.ack:
            channel.basic_ack(method.delivery_tag)
        sys.stdout.buffer.write(body + b"\n")
        sys.stdout.flush()
        fate = "acked" if args.ack else "left in the queue (not acked)"
        _note(f"redelivered={method.redelivered}, {method.message_count} more ready, {fate}")
    return 0


def _queue_names(path: str) -> list[str]:
    """Names only, read-only: mode=ro cannot take a write lock or alter the file."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as ro:
        return [name for (name,) in ro.execute("SELECT name FROM mq_queues ORDER BY name")]


def cmd_queues(args: argparse.Namespace) -> int:
    """One passive declare per queue gives the broker's own counts; an exclusive queue of
    another connection answers 405 (which closes the channel), so it is shown as such."""
    with _connect(args.db) as conn:
        rows = []
        channel = conn.channel()
        for name in _queue_names(args.db):
            try:
                ok = channel.queue_declare(name, passive=True).method
                rows.append((name, str(ok.message_count), str(ok.consumer_count)))
            except mqstore.ChannelClosedByBroker as exc:
                rows.append((name, f"({exc.reply_code})", "-"))
                channel = conn.channel()
    width = max([len("name"), *(len(name) for name, _, _ in rows)])
    print(f"{'name':<{width}}  {'ready':>8}  {'consumers':>9}")
    for name, ready, consumers in rows:
        print(f"{name:<{width}}  {ready:>8}  {consumers:>9}")
    return 0


# --- demo ------------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    """Hidden: one demo worker. Prefetch 1 and manual ack: a job is acked only once done,
    so a worker that dies mid-job leaves it unacked, to be redelivered. Reports events as
    ``<event> <job> <redelivered>`` lines for the demo to narrate."""
    # The demo process already showed any warning about this SQLite; three copies of it
    # would bury the narration.
    logging.getLogger("mqstore").setLevel(logging.ERROR)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with _connect(args.db) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=1)
        print("ready - -", flush=True)
        for method, _, body in channel.consume(args.queue, inactivity_timeout=0.05):
            if stopping.is_set():
                break
            if method is None:
                continue
            print(f"start {body.decode()} {int(method.redelivered)}", flush=True)
            time.sleep(args.job_seconds)
            channel.basic_ack(method.delivery_tag)
            print(f"done {body.decode()} 0", flush=True)
        channel.cancel()
    return 0


class _Worker:
    """A worker subprocess whose output lines a thread forwards to the demo's event queue."""

    def __init__(self, name: str, db: str, events: queue.Queue) -> None:
        self.name = name
        cmd = [sys.executable, "-m", "mqstore", "_worker", "--db", db, "--queue", DEMO_QUEUE]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.done = 0
        threading.Thread(target=self._pump, args=(events,), daemon=True).start()

    def _pump(self, events: queue.Queue) -> None:
        for line in self.proc.stdout:
            events.put((self, *line.split()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _narrate(events: queue.Queue, workers: list[_Worker], jobs: int) -> tuple[set, int]:
    """Print what the workers report; SIGKILL the first one to start a job after finishing
    one (or any job, for tiny demos). Returns (jobs acked, redeliveries seen)."""
    acked: set[str] = set()
    redelivered = 0
    victim: _Worker | None = None
    kill_after = 1 if jobs >= 4 else 0
    deadline = time.monotonic() + DEMO_DEADLINE_S + jobs * JOB_SECONDS
    while len(acked) < jobs and time.monotonic() < deadline:
        try:
            worker, event, job, again = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if event == "start":
            redelivered += again == "1"
            note = "  (redelivered=True: its first worker died holding it)" if again == "1" else ""
            print(f"  [{worker.name}] started {job}{note}")
            if victim is None and worker.done >= kill_after:
                victim = worker
                worker.proc.kill()  # SIGKILL: no cleanup, no ack, no goodbye
                worker.proc.wait()  # reap it, so the broker sees the pid is gone
                print(f"  >>> SIGKILL worker {worker.name} mid-job: {job} is leased to it, unacked")
        elif event == "done":
            worker.done += 1
            acked.add(job)
            print(f"  [{worker.name}] acked {job}")
    return acked, redelivered


def _wait_ready(events: queue.Queue, count: int) -> None:
    """Publish only once both workers are connected, so both take part from the start."""
    try:
        for _ in range(count):
            events.get(timeout=DEMO_DEADLINE_S)
    except queue.Empty:
        raise SystemExit("mqstore: the demo workers did not start") from None


def cmd_demo(args: argparse.Namespace) -> int:
    """Producer (this process), two worker processes, one killed mid-job: shows that an
    unacked job is redelivered to the survivor and nothing is lost."""
    db = os.path.abspath(args.db)
    print(f"mqstore {mqstore.__version__} demo, broker file {db}")
    events: queue.Queue = queue.Queue()
    with _connect(db, must_exist=False) as conn:
        channel = conn.channel()
        channel.queue_delete(DEMO_QUEUE)  # start from an empty queue on re-runs
        channel.queue_declare(DEMO_QUEUE, durable=True)
        workers = [_Worker(name, db, events) for name in ("A", "B")]
        try:
            _wait_ready(events, len(workers))
            print(
                f"workers A (pid {workers[0].proc.pid}) and B (pid {workers[1].proc.pid}) "
                "consume with prefetch 1 and manual ack"
            )
            print(f"producer publishes {args.messages} jobs to durable queue {DEMO_QUEUE!r}")
            for i in range(1, args.messages + 1):
                channel.basic_publish("", DEMO_QUEUE, f"job-{i}".encode())
            acked, redelivered = _narrate(events, workers, args.messages)
        finally:
            for worker in workers:
                worker.stop()
        left = channel.queue_declare(DEMO_QUEUE, passive=True).method.message_count
    lost = args.messages - len(acked) - left  # neither done nor still waiting: gone
    print(f"summary\n  jobs published:   {args.messages}\n  jobs processed:   {len(acked)}")
    print(f"  redelivered:      {redelivered}\n  lost:             {lost}")
    print(f"  left in queue:    {left}")
    return 0 if lost == 0 and left == 0 else 1


def cmd_serve(args: argparse.Namespace) -> int:
    """Imported here: the AMQP server (and pamqp) loads only for this command."""
    from .amqp.server import main as serve_main

    return serve_main(args)


# --- entry point -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mqstore", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"mqstore {mqstore.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="producer, two workers, one killed: nothing lost")
    demo.add_argument("--db", default="mqstore-demo.db", help="default: %(default)s")
    demo.add_argument("--messages", type=_positive, default=6, help="default: %(default)s")
    demo.set_defaults(func=cmd_demo)
    publish = sub.add_parser("publish", help="publish one message (mandatory)")
    publish.add_argument("--db", required=True)
    publish.add_argument("--exchange", default="", help="default: the default exchange")
    publish.add_argument("--routing-key", required=True)
    publish.add_argument("body")
    publish.set_defaults(func=cmd_publish)
    get = sub.add_parser("get", help="fetch one message; --ack removes it")
    get.add_argument("--db", required=True)
    get.add_argument("queue")
    get.add_argument("--ack", action="store_true", help="ack it (else it is requeued)")
    get.set_defaults(func=cmd_get)
    queues = sub.add_parser("queues", help="list queues: ready messages, consumers")
    queues.add_argument("--db", required=True)
    queues.set_defaults(func=cmd_queues)
    serve = sub.add_parser("serve", help="run the AMQP 0-9-1 server for RabbitMQ clients")
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    serve.add_argument("--port", type=int, default=5672, help="default: %(default)s")
    serve.add_argument("--db", default="mqstore.db", help="vhost '/'; default: %(default)s")
    serve.add_argument("--user", action="append", metavar="NAME:PASSWORD", help="repeatable")
    serve.add_argument("--vhost", action="append", metavar="NAME=PATH", help="repeatable")
    serve.add_argument(
        "--disk-free-limit",
        type=int,
        default=50_000_000,
        metavar="BYTES",
        help="block publishers below this much free disk; default: %(default)s",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)
    jobs = sub.add_parser("worker", help="run mqstore.jobs tasks (docs/jobs.md)")
    jobs.add_argument("app", help="the jobs App to serve, as module:attribute")
    jobs.add_argument("--concurrency", "-c", type=_positive, default=os.cpu_count() or 1)
    jobs.add_argument("--pool", choices=["processes", "threads"], default="processes")
    jobs.add_argument("--burst", action="store_true", help="exit once no task is left")
    jobs.set_defaults(func=cmd_jobs_worker)
    worker = sub.add_parser("_worker")  # hidden: no help, not in the COMMAND metavar
    worker.add_argument("--db", required=True)
    worker.add_argument("--queue", required=True)
    worker.add_argument("--job-seconds", type=float, default=JOB_SECONDS)
    worker.set_defaults(func=cmd_worker)
    return parser


def cmd_jobs_worker(args: argparse.Namespace) -> int:
    from .jobs import worker

    sys.path.insert(0, os.getcwd())  # module:app names the user's module, as celery does
    worker.run(args.app, concurrency=args.concurrency, pool=args.pool, burst=args.burst)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one command; broker refusals (404, 406 ...) become a one-line message, exit 1."""
    args = _parser().parse_args(argv)
    # mqstore logs warnings (e.g. about the SQLite version); say whose they are, once.
    logging.basicConfig(format="mqstore: %(levelname)s: %(message)s", level=logging.WARNING)
    try:
        return int(args.func(args))
    except mqstore.ChannelClosedByBroker as exc:
        _note(f"mqstore: error {exc.reply_code}: {exc.reply_text}")
    except mqstore.UnroutableError:
        _note(f"mqstore: unroutable: no queue takes key {args.routing_key!r}; not stored")
    except mqstore.MqstoreError as exc:
        _note(f"mqstore: error: {exc}")
    return 1
