#!/usr/bin/env python3
"""The same pika workload against ``mqstore serve`` and, when one answers on 127.0.0.1:5672,
against RabbitMQ, side by side in the same run.

    .venv/bin/python benchmarks/bench_amqp.py [--quick] [--dir DIR] [--rabbitmq HOST:PORT]

The workload is the one RabbitMQ's docs recommend for messages that must not be lost:

1. **pika, confirms one at a time**: ``BlockingConnection``, a durable queue,
   ``confirm_delivery()``, ``basic_publish`` of persistent messages (``delivery_mode=2``),
   each call returning only once the broker confirmed that message;
2. **aio-pika, pipelined confirms**: one channel with publisher confirms, ``asyncio.gather``
   of many persistent publishes, so many are in flight and the broker can confirm a batch
   (group commit) at once;
3. **pika consumer**: manual ack, ``basic_qos(prefetch_count=100)``, one ``basic_ack`` per
   message, draining everything steps 1 and 2 left in the queue.

Each figure is the median of 3 runs (min and max shown), in messages per second, with the
ratio mqstore / RabbitMQ. ``mqstore serve`` is started by this script on a free port with a
fresh database under ``--dir`` (default ``benchmarks/results``, the repository's file system,
not a tmpfs) and stopped at the end. RabbitMQ is detected, never required: the reason is
printed when it is skipped. Every run uses its own queue, deleted afterwards. The table is
printed and written as Markdown to ``benchmarks/results/amqp.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pika
from pamqp import commands, frame

import mqstore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = 3
PREFETCH = 100
BODY_SIZE = 256
# Random, so no layer benefits from compressible pages; pre-generated, so os.urandom is not
# what gets measured.
BODIES = [os.urandom(BODY_SIZE) for _ in range(1024)]
PERSISTENT = pika.BasicProperties(delivery_mode=2)
RABBITMQ = ("127.0.0.1", 5672)
DETECT_TIMEOUT_S = 1.0
START_DEADLINE_S = 30.0

# Messages per run: (sequential confirms, pipelined confirms). The consumer drains both.
N_FULL = (2000, 20000)
N_QUICK = (100, 500)


def body(i: int) -> bytes:
    return BODIES[i % len(BODIES)]


# --- brokers -------------------------------------------------------------------------------


@dataclass
class Broker:
    label: str
    host: str
    port: int
    version: str = ""
    proc: subprocess.Popen | None = None
    workdir: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mqstore(bench_dir: Path) -> Broker:
    """``mqstore serve`` on a free port with a fresh database; waits until it accepts."""
    workdir = tempfile.mkdtemp(prefix="bench-amqp-", dir=bench_dir)
    port = free_port()
    log = open(os.path.join(workdir, "serve.log"), "wb")
    cmd = [
        sys.executable,
        "-m",
        "mqstore",
        "serve",
        "--port",
        str(port),
        "--db",
        os.path.join(workdir, "broker.db"),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    broker = Broker("mqstore", "127.0.0.1", port, mqstore.__version__, proc, workdir)
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mqstore serve exited {proc.returncode}: {serve_log(broker)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return broker
        except OSError:
            if time.monotonic() > deadline:
                stop_mqstore(broker)
                raise RuntimeError("mqstore serve did not listen") from None
            time.sleep(0.05)


def serve_log(broker: Broker) -> str:
    assert broker.workdir is not None
    return Path(broker.workdir, "serve.log").read_text(errors="replace")[-3000:]


def stop_mqstore(broker: Broker) -> None:
    proc = broker.proc
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if broker.workdir:
        shutil.rmtree(broker.workdir, ignore_errors=True)


def detect_rabbitmq(host: str, port: int) -> tuple[Broker | None, str]:
    """A RabbitMQ answering on host:port, or None and why not. Reads Connection.Start only,
    so the check is quick and never leaves anything behind; a broker whose product is not
    RabbitMQ (say an ``mqstore serve`` on the default port) does not count."""
    try:
        sock = socket.create_connection((host, port), timeout=DETECT_TIMEOUT_S)
    except OSError as exc:
        return None, f"nothing answers on {host}:{port} ({exc.strerror or exc})"
    try:
        sock.settimeout(DETECT_TIMEOUT_S)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        data = b""
        while len(data) < 7 or len(data) < 8 + struct.unpack_from(">I", data, 3)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return None, f"{host}:{port} closed the connection without Connection.Start"
            data += chunk
        _, _, start = frame.unmarshal(data[: 8 + struct.unpack_from(">I", data, 3)[0]])
    except (OSError, ValueError, struct.error) as exc:
        return None, f"{host}:{port} does not speak AMQP 0-9-1 ({exc})"
    except Exception as exc:  # pamqp's decoding errors
        return None, f"{host}:{port} sent an undecodable frame ({exc!r})"
    finally:
        sock.close()
    if not isinstance(start, commands.Connection.Start):
        return None, f"{host}:{port} answered {start!r}, not Connection.Start"
    props = start.server_properties or {}
    product = _text(props.get("product"))
    if product != "RabbitMQ":
        return None, f"{host}:{port} is {product or 'an unknown broker'}, not RabbitMQ"
    return Broker("RabbitMQ", host, port, _text(props.get("version"))), ""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def pika_params(broker: Broker) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(host=broker.host, port=broker.port, heartbeat=0)


# --- the workload ----------------------------------------------------------------------------


def pika_publish(broker: Broker, queue: str, n: int) -> float:
    """One persistent publish at a time, each waiting for its confirm."""
    with pika.BlockingConnection(pika_params(broker)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        start = time.perf_counter()
        for i in range(n):
            channel.basic_publish("", queue, body(i), PERSISTENT)
        return time.perf_counter() - start


async def _aio_publish(broker: Broker, queue: str, n: int) -> float:
    conn = await aio_pika.connect(host=broker.host, port=broker.port)
    try:
        channel = await conn.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        messages = [
            aio_pika.Message(body(i), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            for i in range(n)
        ]
        start = time.perf_counter()
        await asyncio.gather(*(exchange.publish(m, routing_key=queue) for m in messages))
        return time.perf_counter() - start
    finally:
        await conn.close()


def aio_publish(broker: Broker, queue: str, n: int) -> float:
    """All ``n`` persistent publishes in flight on one confirming channel."""
    return asyncio.run(_aio_publish(broker, queue, n))


def pika_consume(broker: Broker, queue: str, n: int) -> float:
    """Manual ack, prefetch 100, one ack per message, until ``n`` were acked."""
    with pika.BlockingConnection(pika_params(broker)) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=PREFETCH)
        seen = 0

        def on_message(ch, method, _properties, _body) -> None:
            nonlocal seen
            ch.basic_ack(method.delivery_tag)
            seen += 1
            if seen == n:
                ch.stop_consuming()

        start = time.perf_counter()
        channel.basic_consume(queue, on_message)
        channel.start_consuming()
        elapsed = time.perf_counter() - start
        # Acks are asynchronous: a synchronous round trip makes sure they all arrived.
        left = channel.queue_declare(queue, passive=True).method.message_count
        if left:
            raise RuntimeError(f"{broker.label}: {left} messages left after the drain")
        return elapsed


@dataclass
class Step:
    key: str
    label: str
    run: Callable[[Broker, str, int], float]


STEPS = [
    Step("seq", "pika publish, persistent, confirm each (1 in flight)", pika_publish),
    Step("aio", "aio-pika publish, persistent, pipelined confirms (gather)", aio_publish),
    Step("consume", f"pika consume, manual ack, prefetch {PREFETCH}", pika_consume),
]


def one_run(broker: Broker, n_seq: int, n_aio: int) -> dict[str, float]:
    """One pass of the workload on a fresh durable queue: msgs/s per step."""
    queue = f"bench-amqp-{uuid.uuid4().hex[:12]}"
    with pika.BlockingConnection(pika_params(broker)) as conn:
        conn.channel().queue_declare(queue, durable=True)
    try:
        counts = {"seq": n_seq, "aio": n_aio, "consume": n_seq + n_aio}
        rates = {}
        for step in STEPS:
            n = counts[step.key]
            rates[step.key] = n / step.run(broker, queue, n)
        return rates
    finally:
        with pika.BlockingConnection(pika_params(broker)) as conn:
            conn.channel().queue_delete(queue)


@dataclass
class Measured:
    broker: Broker
    rates: dict[str, list[float]] = field(default_factory=dict)

    def median(self, key: str) -> float:
        return statistics.median(self.rates[key])


def measure(brokers: list[Broker], n_seq: int, n_aio: int) -> list[Measured]:
    """One warm-up run each, then the brokers take turns, run by run, so a change in the
    machine's load during the benchmark (it is shared) weighs on both alike."""
    for broker in brokers:
        one_run(broker, max(10, n_seq // 20), max(50, n_aio // 20))  # not counted
    measured = [Measured(broker, {step.key: [] for step in STEPS}) for broker in brokers]
    for i in range(RUNS):
        for m in measured:
            rates = one_run(m.broker, n_seq, n_aio)
            for key, rate in rates.items():
                m.rates[key].append(rate)
            summary = ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
            print(f"  {m.broker.label} run {i + 1}: {summary} msgs/s", file=sys.stderr, flush=True)
    return measured


# --- report ----------------------------------------------------------------------------------


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
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, fstype = mount, f"{fields[2]} ({fields[0]} on {mount})"
    return fstype


def cell(measured: Measured | None, key: str) -> str:
    if measured is None:
        return "—"
    rates = measured.rates[key]
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def table(ours: Measured, theirs: Measured | None, counts: dict[str, int]) -> str:
    lines = [
        "| Workload | N | mqstore msgs/s, median (min-max) "
        "| RabbitMQ msgs/s, median (min-max) | mqstore / RabbitMQ |",
        "|---|---:|---:|---:|---:|",
    ]
    for step in STEPS:
        ratio = "—"
        if theirs is not None:
            ratio = f"{ours.median(step.key) / theirs.median(step.key):.2f}"
        lines.append(
            f"| {step.label} | {counts[step.key]:,} | {cell(ours, step.key)} "
            f"| {cell(theirs, step.key)} | {ratio} |"
        )
    return "\n".join(lines)


def report(
    ours: Measured,
    theirs: Measured | None,
    skipped: str,
    counts: dict[str, int],
    bench_dir: Path,
    quick: bool,
) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick (smoke test: tiny N, figures not meaningful)" if quick else "full"
    rabbit = (
        f"RabbitMQ {theirs.broker.version} on {theirs.broker.host}:{theirs.broker.port}"
        if theirs is not None
        else f"not measured: {skipped}"
    )
    info = [
        ("CPUs", str(os.cpu_count())),
        ("mqstore database", f"{bench_dir.resolve()} ({filesystem(bench_dir)})"),
        ("mqstore", f"{mqstore.__version__}, SQLite {sqlite3.sqlite_version}, durability full"),
        ("RabbitMQ", rabbit),
        ("Clients", f"pika {pika.__version__}, aio-pika {aio_pika.__version__}"),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("Platform", platform.platform()),
    ]
    return "\n".join(
        [
            "# AMQP benchmark: mqstore serve vs RabbitMQ",
            "",
            f"`{' '.join([Path(sys.executable).name, *sys.argv])}` — {when}, mode: {mode}",
            "",
            *[f"- {key}: {value}" for key, value in info],
            "",
            f"Median of {RUNS} runs (after one warm-up run; the brokers take turns run by run), "
            f"{BODY_SIZE}-byte random bodies, "
            "durable queue, persistent messages (delivery_mode=2), client and broker on the "
            "same machine over loopback. Each run publishes into a fresh queue with pika "
            "(one confirm awaited per publish), then with aio-pika (all publishes of the "
            "run in flight at once on one confirming channel), then drains the queue with a "
            f"pika consumer (manual ack per message, prefetch {PREFETCH}).",
            "",
            table(ours, theirs, counts),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny N: a smoke test")
    parser.add_argument(
        "--dir", type=Path, default=RESULTS, help="where mqstore's database goes (%(default)s)"
    )
    parser.add_argument(
        "--rabbitmq",
        default=f"{RABBITMQ[0]}:{RABBITMQ[1]}",
        metavar="HOST:PORT",
        help="where to look for RabbitMQ (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    n_seq, n_aio = N_QUICK if args.quick else N_FULL
    counts = {"seq": n_seq, "aio": n_aio, "consume": n_seq + n_aio}

    host, _, port = args.rabbitmq.rpartition(":")
    rabbit, skipped = detect_rabbitmq(host or RABBITMQ[0], int(port or RABBITMQ[1]))
    if rabbit is None:
        print(f"RabbitMQ skipped: {skipped}", file=sys.stderr)
    else:
        print(f"RabbitMQ {rabbit.version} found on {rabbit.host}:{rabbit.port}", file=sys.stderr)

    broker = start_mqstore(args.dir)
    try:
        print(f"mqstore serve on port {broker.port}", file=sys.stderr, flush=True)
        measured = measure([broker] + ([rabbit] if rabbit is not None else []), n_seq, n_aio)
        if broker.proc is not None and broker.proc.poll() is not None:
            raise RuntimeError(f"mqstore serve died: {serve_log(broker)}")
    finally:
        stop_mqstore(broker)
    ours = measured[0]
    theirs = measured[1] if rabbit is not None else None

    text = report(ours, theirs, skipped, counts, args.dir, args.quick)
    (RESULTS / "amqp.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {RESULTS / 'amqp.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
