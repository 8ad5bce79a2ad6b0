"""Child processes for the crash tests: ``python -m tests.crash.child MODE ARGS...``.

Each mode reports progress on stdout, one flushed line per event: ``EVENT key=value ...``
(values shell-quoted, see :func:`tests.crash.harness.parse`). The parent test acts on marker
lines (kills after the Nth ``ok``, stops after ``leased``, ...), never on a timer. A mode that
fails reports ``error type=... msg=...`` and exits with status 3.

Times (``t=``) are CLOCK_BOOTTIME seconds: one clock for every process on the host, so the
parent can order events of several children (the history checker does).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import mqstore

CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def now() -> float:
    return time.clock_gettime(CLOCK)


def say(event: str, **fields: Any) -> None:
    parts = [event, *(f"{key}={shlex.quote(str(value))}" for key, value in fields.items())]
    sys.stdout.write(" ".join(parts) + "\n")
    sys.stdout.flush()


_NEVER = threading.Event()


def pause(seconds: float | None = None) -> None:
    """Sleep (``None``: for ever). Not time.sleep: under libfaketime (the clock-skew tests)
    its absolute clock_nanosleep fails with EINVAL; a timed lock wait does not."""
    _NEVER.wait(seconds)


def block_forever() -> None:
    """Hold whatever the child holds until the parent kills it."""
    pause()


def connect(args: argparse.Namespace) -> mqstore.BlockingConnection:
    return mqstore.BlockingConnection(
        mqstore.ConnectionParameters(
            path=args.db,
            durability=args.durability,
            visibility_timeout_ms=args.vt_ms,
            client_name=f"crash-{args.mode}-{os.getpid()}",
        )
    )


# --- modes ------------------------------------------------------------------------------------


def hold_tx(args: argparse.Namespace) -> None:
    """F1: raw sqlite3 on the mqstore file; insert rows inside BEGIN IMMEDIATE and hold."""
    conn = sqlite3.connect(args.db, isolation_level=None, timeout=10)
    conn.execute("BEGIN IMMEDIATE")
    (queue_id,) = conn.execute("SELECT id FROM mq_queues WHERE name = ?", (args.queue,)).fetchone()
    for i in range(args.count):
        message_id = conn.execute(
            "INSERT INTO mq_messages (exchange, routing_key, properties, body, published_at_ms) "
            "VALUES ('', ?, NULL, ?, 0)",
            (args.queue, f"uncommitted-{i}".encode()),
        ).lastrowid
        conn.execute(
            "INSERT INTO mq_entries (queue_id, message_id, priority) VALUES (?, ?, 0)",
            (queue_id, message_id),
        )
    say("in-tx", rows=args.count)
    block_forever()


def publish(args: argparse.Namespace) -> None:
    """Publish ``PREFIX-i`` bodies; ``try`` before and ``ok`` after basic_publish returned."""
    if args.start_file:
        say("waiting")
        while not os.path.exists(args.start_file):
            time.sleep(0.001)
    with connect(args) as conn:
        channel = conn.channel()
        if args.declare:
            channel.queue_declare(args.queue, durable=True)
        say("ready")
        i = 0
        while args.count == 0 or i < args.count:
            message_id = f"{args.prefix}-{i}"
            say("try", id=message_id)
            channel.basic_publish("", args.queue, message_id.encode())
            say("ok", id=message_id)
            i += 1
        say("done")


def lease(args: argparse.Namespace) -> None:
    """Lease ``count`` messages with basic_get (manual ack), report them, hold them."""
    conn = connect(args)
    channel = conn.channel()
    for _ in range(args.count):
        method, _, body = channel.basic_get(args.queue)
        if method is None:
            say("empty")
            break
        say(
            "leased",
            id=body.decode(),
            redelivered=int(method.redelivered),
            count=method.delivery_count,
            t=now(),
        )
    say("holding")
    block_forever()


def process_then_hang(args: argparse.Namespace) -> None:
    """Consume (prefetch 1); report ``processed`` and wait before acking (killed there)."""
    conn = connect(args)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=1)

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        say("processing", id=body.decode(), count=method.delivery_count, t=now())
        say("processed", id=body.decode())
        sys.stdin.readline()  # the parent kills us here: processed, not yet acked
        ch.basic_ack(method.delivery_tag)
        say("acked", id=body.decode(), t=now())

    channel.basic_consume(args.queue, on_message)
    say("ready")
    channel.start_consuming()


def fence(args: argparse.Namespace) -> None:
    """F4: lease one message, then settle it as stdin says (ack, nack or reject)."""
    conn = connect(args)
    channel = conn.channel()
    method, _, body = channel.basic_get(args.queue)
    if method is None:
        say("empty")
        return
    say("leased", id=body.decode(), count=method.delivery_count, t=now())
    operation = sys.stdin.readline().strip()  # the parent SIGSTOPs us while we wait here
    try:
        if operation == "ack":
            channel.basic_ack(method.delivery_tag)
        elif operation == "nack":
            channel.basic_nack(method.delivery_tag, requeue=True)
        else:
            channel.basic_reject(method.delivery_tag, requeue=False)
    except mqstore.LeaseLostError as exc:
        say("lease-lost", code=exc.reply_code, t=now())
    else:
        say("settled", t=now())
    conn.close()
    say("closed")


def drain(args: argparse.Namespace) -> None:
    """Open the file (later, in a new process), get and ack ``count`` messages."""
    started = now()
    with connect(args) as conn:
        channel = conn.channel()
        got = 0
        give_up = time.monotonic() + args.give_up_s
        while got < args.count:
            method, _, body = channel.basic_get(args.queue)
            if method is None:
                if time.monotonic() > give_up:
                    say("gave-up", got=got)
                    break
                pause(0.01)
                continue
            say(
                "got",
                id=body.decode(),
                redelivered=int(method.redelivered),
                count=method.delivery_count,
                elapsed=now() - started,
                t=now(),
            )
            channel.basic_ack(method.delivery_tag)
            say("acked", id=body.decode(), t=now())
            got += 1
        say("done")


def consume(args: argparse.Namespace) -> None:
    """A worker: consume with ``prefetch``, ack each delivery, until the stop file exists."""
    with connect(args) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=args.prefetch)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            message_id = body.decode()
            say(
                "got",
                id=message_id,
                redelivered=int(method.redelivered),
                count=method.delivery_count,
                t=now(),
            )
            ch.basic_ack(method.delivery_tag)
            say("acked", id=message_id, t=now())

        channel.basic_consume(args.queue, on_message)
        say("ready")
        if args.start_file:
            while not os.path.exists(args.start_file):
                time.sleep(0.001)
        while not os.path.exists(args.stop_file):
            conn.process_data_events(time_limit=0.05)
    say("bye")


def work(args: argparse.Namespace) -> None:
    """A worker for random kills: as ``consume``, plus an ``acking`` line right before each
    basic_ack, and a ``synced`` line after every ``sync_every`` acks.

    basic_ack may return before its commit (a deferred ack, committed by the next group
    commit, like an AMQP ack on the wire), so an ``acked`` line alone does not prove the ack
    is stored: ``synced`` is printed after a synchronous operation (a passive declare),
    which commits every ack queued before it. A kill after ``got`` and before ``acking``
    hits a delivery whose ack never began; acks after the last ``synced`` of a killed
    worker are in flight (outcome unknown)."""
    acked = 0
    with connect(args) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=args.prefetch)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            nonlocal acked
            message_id = body.decode()
            say(
                "got",
                id=message_id,
                redelivered=int(method.redelivered),
                count=method.delivery_count,
                t=now(),
            )
            say("acking", id=message_id)
            ch.basic_ack(method.delivery_tag)
            say("acked", id=message_id, t=now())
            acked += 1
            if acked % args.sync_every == 0:
                ch.queue_declare(args.queue, passive=True)
                say("synced")

        channel.basic_consume(args.queue, on_message)
        say("ready")
        while not (args.stop_file and os.path.exists(args.stop_file)):
            conn.process_data_events(time_limit=0.05)
    say("bye")


def churn(args: argparse.Namespace) -> None:
    """Other write paths for the writer storm: declare, bind, publish, get, ack, delete."""
    with connect(args) as conn:
        channel = conn.channel()
        channel.exchange_declare("churn.x", "fanout")
        say("ready")
        for i in range(args.count):
            queue = f"churn-{os.getpid()}-{i}"
            channel.queue_declare(queue)
            channel.queue_bind(queue, "churn.x")
            channel.basic_publish("churn.x", "", b"x")
            method, _, _ = channel.basic_get(queue)
            if method is not None:
                channel.basic_ack(method.delivery_tag)
            channel.queue_delete(queue)
        say("done")


def fork_check(args: argparse.Namespace) -> None:
    """F11: fork after opening; the child reports by exit status, the parent keeps going.

    Exit statuses: 10 UsedAfterForkError raised, 11 the inherited connection worked,
    12 another error; 20 a new connection in the child worked, 21 it failed.
    """
    conn = connect(args)
    channel = conn.channel()
    channel.queue_declare(args.queue, durable=True)
    channel.basic_publish("", args.queue, b"before-fork")

    def in_child(body: Callable[[], int]) -> int:
        pid = os.fork()
        if pid == 0:
            try:
                code = body()
            except BaseException:
                code = 99
            os._exit(code)  # no atexit, no finalizers: never close inherited handles
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def use_inherited() -> int:
        try:
            channel.basic_publish("", args.queue, b"from-child-inherited")
        except mqstore.UsedAfterForkError:
            return 10
        except Exception:
            return 12
        return 11

    def use_new() -> int:
        try:
            with connect(args) as fresh:
                fresh.channel().basic_publish("", args.queue, b"from-child-new")
        except Exception:
            return 21
        return 20

    say("inherited", rc=in_child(use_inherited))
    say("new", rc=in_child(use_new))
    channel.basic_publish("", args.queue, b"after-fork")
    bodies = []
    while True:
        method, _, body = channel.basic_get(args.queue, auto_ack=True)
        if method is None:
            break
        bodies.append(body.decode())
    conn.close()
    say("parent", bodies=",".join(bodies))


MODES: dict[str, Callable[[argparse.Namespace], None]] = {
    "hold-tx": hold_tx,
    "publish": publish,
    "lease": lease,
    "process-then-hang": process_then_hang,
    "fence": fence,
    "drain": drain,
    "consume": consume,
    "work": work,
    "churn": churn,
    "fork": fork_check,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash.child")
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("db")
    parser.add_argument("--queue", default="q")
    parser.add_argument("--prefix", default="m")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--durability", default="full")
    parser.add_argument("--vt-ms", type=int, default=60_000)
    parser.add_argument("--start-file")
    parser.add_argument("--stop-file")
    parser.add_argument("--declare", action="store_true")
    parser.add_argument("--give-up-s", type=float, default=10.0)
    parser.add_argument("--sync-every", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        MODES[args.mode](args)
    except Exception as exc:
        say("error", type=type(exc).__name__, msg=str(exc))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
