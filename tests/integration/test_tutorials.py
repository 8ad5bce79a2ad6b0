"""RabbitMQ's six Python tutorials, run against mqstore through both APIs.

Each tutorial is a pair of tests: ``..._blocking`` uses ``mqstore.BlockingConnection`` as the
tutorial uses ``pika.BlockingConnection``; ``..._asyncio`` is the same program written with
``mqstore.aio``. Producers and consumers that would be separate programs get separate
connections (and threads or tasks where both must run at once); hello world also runs as two
real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import queue as queue_module
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mqstore
from mqstore import BasicProperties, DeliveryMode

WAIT_S = 15  # failure bound for anything we wait on; never reached when the test passes
STOP = b"--stop--"

# --- the seed (/work/shared/seed/rabbitmq-notes.md), verbatim, comments dropped -----------

SEED_PRODUCER = """\
import pika

connection = pika.BlockingConnection(
    pika.ConnectionParameters(host='localhost')
    )

channel = connection.channel()
channel.queue_declare(queue='hello')

channel.exchange_declare(exchange='greeting')

channel.basic_publish(exchange='greeting', routing_key='hello', body='Hello World!')
connection.close()
"""

SEED_CONSUMER = """\
import pika, sys, os

connection = pika.BlockingConnection(
    pika.ConnectionParameters(host='localhost')
    )

channel = connection.channel()
channel.queue_declare(queue='hello')

def callback(ch, method, properties, body):
    print(" [x] Received %r" % body)

channel.basic_consume(queue='hello', on_message_callback=callback, auto_ack=True)
channel.start_consuming()
"""

# The fix: a message published to a non-default exchange reaches only bound queues.
BIND_LINE = "channel.queue_bind(queue='hello', exchange='greeting', routing_key='hello')\n"
CORRECTED_PRODUCER = SEED_PRODUCER.replace(
    "\nchannel.basic_publish(", "\n" + BIND_LINE + "channel.basic_publish("
)

ASYNC_PRODUCER = """\
import asyncio
import mqstore.aio

async def main():
    connection = await mqstore.aio.connect({path!r})
    channel = await connection.channel()
    await channel.queue_declare(queue='hello')
    await channel.exchange_declare(exchange='greeting')
    await channel.queue_bind(queue='hello', exchange='greeting', routing_key='hello')
    await channel.basic_publish(exchange='greeting', routing_key='hello', body='Hello World!')
    await connection.close()

asyncio.run(main())
"""

ASYNC_CONSUMER = """\
import asyncio
import mqstore.aio

async def main():
    connection = await mqstore.aio.connect({path!r})
    channel = await connection.channel()
    await channel.queue_declare(queue='hello')
    async for delivery in channel.consume('hello', auto_ack=True):
        print(" [x] Received %r" % delivery.body)

asyncio.run(main())
"""

HELLO_LINE = " [x] Received b'Hello World!'"


def for_mqstore(source: str, path: str | Path) -> str:
    """The pika program with its import and connection lines changed, nothing else."""
    return source.replace("import pika", "import mqstore as pika").replace(
        "host='localhost'", f"path={str(path)!r}"
    )


def connect(path: str) -> mqstore.BlockingConnection:
    return mqstore.BlockingConnection(mqstore.ConnectionParameters(path=str(path)))


async def aconnect(path: str) -> mqstore.aio.AsyncConnection:
    return await mqstore.aio.connect(str(path))


def ready_count(path: str, queue: str) -> int:
    with connect(path) as connection:
        return connection.channel().queue_declare(queue, passive=True).method.message_count


def run_script(source: str) -> None:
    """exec() a program as ``python -c`` would run it."""
    exec(compile(source, "<tutorial>", "exec"), {"__name__": "__main__"})


@contextlib.contextmanager
def running(fn: Callable[[], Any]) -> Iterator[threading.Thread]:
    """Run ``fn`` on a daemon thread; on leaving, join it and re-raise what it raised."""
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(WAIT_S)
    assert not thread.is_alive(), f"{fn} did not finish within {WAIT_S} s"
    if "error" in outcome:
        raise outcome["error"]


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel a consumer task and re-raise anything it raised before."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def stop_consuming_from_outside(connection: Any, channel: Any) -> None:
    """pika's way to end another thread's start_consuming()."""
    connection.add_callback_threadsafe(channel.stop_consuming)


def collect_blocking(channel: mqstore.BlockingChannel, queue: str) -> list[tuple[str, bytes]]:
    """Consume ``(routing_key, body)`` pairs until the STOP message."""
    got: list[tuple[str, bytes]] = []
    for method, _properties, body in channel.consume(
        queue, auto_ack=True, inactivity_timeout=WAIT_S
    ):
        assert method is not None, f"nothing arrived within {WAIT_S} s after {got}"
        if body == STOP:
            break
        got.append((method.routing_key, body))
    channel.cancel()
    return got


async def collect_async(channel: mqstore.aio.AsyncChannel, queue: str) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []

    async def until_stop() -> None:
        async with contextlib.aclosing(channel.consume(queue, auto_ack=True)) as deliveries:
            async for delivery in deliveries:
                if delivery.body == STOP:
                    return
                got.append((delivery.routing_key, delivery.body))

    await asyncio.wait_for(until_stop(), WAIT_S)
    return got


# --- 1. hello world --------------------------------------------------------------------------


def test_seed_programs_change_only_their_import_and_connection_lines(tmp_path: Path) -> None:
    for source in (SEED_PRODUCER, SEED_CONSUMER):
        changed = [
            line
            for line in difflib.ndiff(
                source.splitlines(), for_mqstore(source, tmp_path).splitlines()
            )
            if line.startswith("+ ")
        ]
        assert len(changed) == 2
        assert changed[0].startswith("+ import mqstore as pika")
        assert changed[1][2:].strip().startswith("pika.ConnectionParameters(path=")


def test_hello_world_blocking__seed_producer_without_binding_is_dropped_and_bound_one_delivers(
    db_path: str,
) -> None:
    # Given the seed producer as written: it publishes to 'greeting', which nothing is bound to
    run_script(for_mqstore(SEED_PRODUCER, db_path))
    # Then RabbitMQ (and mqstore) drop the message: 'hello' stays empty, and the same
    # publish with mandatory=True comes back unroutable
    assert ready_count(db_path, "hello") == 0
    with connect(db_path) as connection:
        with pytest.raises(mqstore.UnroutableError) as returned:
            connection.channel().basic_publish(
                exchange="greeting", routing_key="hello", body="Hello World!", mandatory=True
            )
    assert returned.value.messages[0].method.reply_code == 312

    # When the corrected producer (with queue_bind) has run and exited
    run_script(for_mqstore(CORRECTED_PRODUCER, db_path))
    assert ready_count(db_path, "hello") == 1
    # Then the seed consumer, started afterwards, prints the one message
    lines: list[str] = []
    printed = threading.Event()

    def record(*args: Any) -> None:
        lines.append(" ".join(map(str, args)))
        printed.set()

    consumer: dict[str, Any] = {"__name__": "__main__", "print": record}
    source = compile(for_mqstore(SEED_CONSUMER, db_path), "<consumer>", "exec")
    with running(lambda: exec(source, consumer)):
        assert printed.wait(WAIT_S), "the seed consumer printed nothing"
        # The seed consumes forever; end its start_consuming() as pika allows, from outside.
        stop_consuming_from_outside(consumer["connection"], consumer["channel"])
    consumer["connection"].close()
    assert lines == [HELLO_LINE]
    assert ready_count(db_path, "hello") == 0


async def test_hello_world_asyncio__unbound_exchange_drops_and_bound_one_delivers(
    db_path: str,
) -> None:
    # Given the seed's producer in asyncio: no binding, so the message is dropped
    producer = await aconnect(db_path)
    channel = await producer.channel()
    await channel.queue_declare(queue="hello")
    await channel.exchange_declare(exchange="greeting")
    await channel.basic_publish(exchange="greeting", routing_key="hello", body="Hello World!")
    assert (await channel.queue_declare("hello", passive=True)).method.message_count == 0
    with pytest.raises(mqstore.UnroutableError):
        await channel.basic_publish("greeting", "hello", "Hello World!", mandatory=True)
    # When the corrected producer binds, publishes and closes before any consumer starts
    await channel.queue_bind(queue="hello", exchange="greeting", routing_key="hello")
    await channel.basic_publish(exchange="greeting", routing_key="hello", body="Hello World!")
    await producer.close()

    # Then a consumer on a new connection gets exactly that message
    consumer = await aconnect(db_path)
    channel = await consumer.channel()
    await channel.queue_declare(queue="hello")
    lines: list[str] = []
    printed = asyncio.Event()

    def callback(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        lines.append(" [x] Received %r" % body)  # noqa: UP031 - the tutorial's line
        printed.set()

    await channel.basic_consume(queue="hello", on_message_callback=callback, auto_ack=True)
    await asyncio.wait_for(printed.wait(), WAIT_S)
    await consumer.close()
    assert lines == [HELLO_LINE]
    assert ready_count(db_path, "hello") == 0


def _read_lines(stream: Any, into: queue_module.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_hello_world__message_survives_producer_process_exit_and_consumer_process_prints_it(
    db_path: str, api: str
) -> None:
    if api == "blocking":
        producer = for_mqstore(CORRECTED_PRODUCER, db_path)
        consumer = for_mqstore(SEED_CONSUMER, db_path)
    else:
        producer = ASYNC_PRODUCER.format(path=str(db_path))
        consumer = ASYNC_CONSUMER.format(path=str(db_path))
    # Given a producer process that published and exited
    done = subprocess.run(
        [sys.executable, "-c", producer], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # When a consumer process starts afterwards
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", consumer],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue_module.Queue[str] = queue_module.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        # Then it prints the message (and keeps consuming, as the seed does)
        try:
            line = lines.get(timeout=60)
        except queue_module.Empty:
            proc.kill()
            pytest.fail(f"the consumer printed nothing; stderr: {proc.communicate()[1]}")
        assert line == HELLO_LINE
        assert proc.poll() is None, "the consumer should still be consuming"
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT_S)
        reader.join(WAIT_S)
    assert ready_count(db_path, "hello") == 0


# --- 2. work queues --------------------------------------------------------------------------

TASKS = [f"task {i}{'.' * i}".encode() for i in range(6)]


def new_task(path: str, tasks: list[bytes]) -> None:
    """The tutorial's new_task.py: persistent messages into a durable queue."""
    with connect(path) as connection:
        channel = connection.channel()
        channel.queue_declare(queue="task_queue", durable=True)
        for message in tasks:
            channel.basic_publish(
                exchange="",
                routing_key="task_queue",
                body=message,
                properties=BasicProperties(delivery_mode=DeliveryMode.Persistent),
            )


def test_work_queue_blocking__prefetch_one_gives_each_task_to_exactly_one_free_worker(
    db_path: str,
) -> None:
    new_task(db_path, TASKS)
    received: dict[str, list[bytes]] = {"busy": [], "free": []}
    handles: dict[str, tuple[Any, Any]] = {}
    busy_has_task, release_busy, free_done = (threading.Event() for _ in range(3))

    def worker(name: str, on_task: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:  # the tutorial's worker.py
            connection = connect(db_path)
            channel = connection.channel()
            channel.queue_declare(queue="task_queue", durable=True)

            def callback(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                received[name].append(body)
                on_task()
                ch.basic_ack(delivery_tag=method.delivery_tag)

            channel.basic_qos(prefetch_count=1)
            channel.basic_consume(queue="task_queue", on_message_callback=callback)
            handles[name] = (connection, channel)
            try:
                channel.start_consuming()
            finally:
                connection.close()

        return run

    def busy() -> None:
        busy_has_task.set()
        assert release_busy.wait(WAIT_S)

    def free() -> None:
        if len(received["free"]) == len(TASKS) - 1:
            free_done.set()

    # Given one worker stuck on its first task (unacked)
    with running(worker("busy", busy)):
        assert busy_has_task.wait(WAIT_S)
        # When a second worker starts, then it gets every other task: prefetch_count=1
        # keeps them off the busy worker
        with running(worker("free", free)):
            assert free_done.wait(WAIT_S)
            assert received == {"busy": TASKS[:1], "free": TASKS[1:]}
            release_busy.set()
            stop_consuming_from_outside(*handles["free"])
        stop_consuming_from_outside(*handles["busy"])
    # Every task was acked exactly once: nothing came back when the workers closed
    assert received == {"busy": TASKS[:1], "free": TASKS[1:]}
    assert ready_count(db_path, "task_queue") == 0


def test_work_queue_blocking__unacked_task_of_closed_channel_is_redelivered_to_other_worker(
    db_path: str,
) -> None:
    new_task(db_path, [b"only task"])
    # Given a worker that received the task and has not acked it
    deliveries: list[tuple[str, Any, Any, bytes]] = []
    quitter = connect(db_path)
    quitter_channel = quitter.channel()
    quitter_channel.basic_qos(prefetch_count=1)
    quitter_channel.basic_consume(
        "task_queue", lambda ch, m, p, b: deliveries.append(("quitter", m, p, b))
    )
    deadline = time.monotonic() + WAIT_S
    while not deliveries:
        assert time.monotonic() < deadline, "the first worker got no task"
        quitter.process_data_events(time_limit=1)

    # And a second worker waiting on its own connection
    handles: list[tuple[Any, Any]] = []
    redelivered = threading.Event()
    started = threading.Event()

    def other_worker() -> None:
        connection = connect(db_path)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)

        def callback(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            deliveries.append(("other", method, properties, body))
            ch.basic_ack(delivery_tag=method.delivery_tag)
            redelivered.set()

        channel.basic_consume("task_queue", callback)
        handles.append((connection, channel))
        started.set()
        try:
            channel.start_consuming()
        finally:
            connection.close()

    with running(other_worker):
        assert started.wait(WAIT_S)
        # When the first worker closes its channel without acking
        quitter_channel.close()
        # Then the task goes to the other worker, marked redelivered
        assert redelivered.wait(WAIT_S)
        stop_consuming_from_outside(*handles[0])
    quitter.close()
    assert [(who, body) for who, _, _, body in deliveries] == [
        ("quitter", b"only task"),
        ("other", b"only task"),
    ]
    first, second = deliveries[0][1], deliveries[1][1]
    assert (first.redelivered, second.redelivered) == (False, True)
    assert deliveries[1][2].headers == {"x-delivery-count": 1}
    assert ready_count(db_path, "task_queue") == 0


async def test_work_queue_asyncio__prefetch_one_gives_each_task_to_exactly_one_free_worker(
    db_path: str,
) -> None:
    new_task(db_path, TASKS)
    received: dict[str, list[bytes]] = {"busy": [], "free": []}
    busy_has_task, release_busy, free_done = (asyncio.Event() for _ in range(3))

    async def worker(name: str, on_task: Callable[[], Any]) -> None:
        connection = await aconnect(db_path)
        try:
            channel = await connection.channel()
            await channel.queue_declare(queue="task_queue", durable=True)
            await channel.basic_qos(prefetch_count=1)
            async for delivery in channel.consume("task_queue"):
                received[name].append(delivery.body)
                await on_task()
                await delivery.ack()
        finally:
            await connection.close()

    async def busy() -> None:
        busy_has_task.set()
        await release_busy.wait()

    async def free() -> None:
        if len(received["free"]) == len(TASKS) - 1:
            free_done.set()

    # Given one worker stuck on its first task (unacked)
    busy_worker = asyncio.create_task(worker("busy", busy))
    await asyncio.wait_for(busy_has_task.wait(), WAIT_S)
    # When a second worker starts, then it gets every other task
    free_worker = asyncio.create_task(worker("free", free))
    await asyncio.wait_for(free_done.wait(), WAIT_S)
    assert received == {"busy": TASKS[:1], "free": TASKS[1:]}
    release_busy.set()
    await stop_task(free_worker)
    await stop_task(busy_worker)
    assert received == {"busy": TASKS[:1], "free": TASKS[1:]}
    assert ready_count(db_path, "task_queue") == 0


async def test_work_queue_asyncio__unacked_task_of_closed_channel_is_redelivered_to_other_worker(
    db_path: str,
) -> None:
    new_task(db_path, [b"only task"])
    # Given a worker that received the task and has not acked it
    quitter = await aconnect(db_path)
    quitter_channel = await quitter.channel()
    await quitter_channel.basic_qos(prefetch_count=1)
    deliveries = quitter_channel.consume("task_queue")
    first = await asyncio.wait_for(anext(deliveries), WAIT_S)

    # And a second worker waiting on its own connection
    other = await aconnect(db_path)
    other_channel = await other.channel()
    await other_channel.basic_qos(prefetch_count=1)
    got: asyncio.Future[mqstore.aio.Delivery] = asyncio.get_running_loop().create_future()

    async def callback(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        await ch.basic_ack(method.delivery_tag)
        got.set_result(mqstore.aio.Delivery(ch, method, properties, body))

    await other_channel.basic_consume("task_queue", callback)
    # When the first worker closes its channel without acking
    await quitter_channel.close()
    # Then the task goes to the other worker, marked redelivered
    second = await asyncio.wait_for(got, WAIT_S)
    await deliveries.aclose()
    await other.close()
    await quitter.close()
    assert (first.body, second.body) == (b"only task", b"only task")
    assert (first.redelivered, second.redelivered) == (False, True)
    assert second.properties.headers == {"x-delivery-count": 1}
    assert ready_count(db_path, "task_queue") == 0


# --- 3. publish/subscribe --------------------------------------------------------------------

LOGS = [b"info: Hello World!", b"warning: disk 91% full", b"error: it broke"]


def test_publish_subscribe_blocking__every_server_named_exclusive_queue_gets_every_log(
    db_path: str,
) -> None:
    # Given two receive_logs.py subscribers, each with a server-named exclusive queue
    subscribers = []
    for _ in range(2):
        connection = connect(db_path)
        channel = connection.channel()
        channel.exchange_declare(exchange="logs", exchange_type="fanout")
        result = channel.queue_declare(queue="", exclusive=True)
        queue_name = result.method.queue
        channel.queue_bind(exchange="logs", queue=queue_name)
        subscribers.append((connection, channel, queue_name))
    names = [name for _, _, name in subscribers]
    assert names[0] != names[1]
    assert all(name.startswith("amq.gen-") for name in names)

    # When emit_log.py publishes on its own connection
    with connect(db_path) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange="logs", exchange_type="fanout")
        for message in [*LOGS, STOP]:
            channel.basic_publish(exchange="logs", routing_key="", body=message)

    # Then each subscriber receives every log, in order
    for _, channel, queue_name in subscribers:
        assert [body for _, body in collect_blocking(channel, queue_name)] == LOGS
    # And an exclusive queue goes away with its connection
    subscribers[0][0].close()
    with connect(db_path) as connection, pytest.raises(mqstore.NotFoundError) as missing:
        connection.channel().queue_declare(names[0], passive=True)
    assert missing.value.reply_code == 404
    subscribers[1][0].close()


async def test_publish_subscribe_asyncio__every_server_named_exclusive_queue_gets_every_log(
    db_path: str,
) -> None:
    subscribers = []
    for _ in range(2):
        connection = await aconnect(db_path)
        channel = await connection.channel()
        await channel.exchange_declare(exchange="logs", exchange_type="fanout")
        result = await channel.queue_declare(queue="", exclusive=True)
        queue_name = result.method.queue
        await channel.queue_bind(exchange="logs", queue=queue_name)
        subscribers.append((connection, channel, queue_name))
    names = [name for _, _, name in subscribers]
    assert names[0] != names[1]
    assert all(name.startswith("amq.gen-") for name in names)

    publisher = await aconnect(db_path)
    channel = await publisher.channel()
    await channel.exchange_declare(exchange="logs", exchange_type="fanout")
    for message in [*LOGS, STOP]:
        await channel.basic_publish(exchange="logs", routing_key="", body=message)
    await publisher.close()

    results = await asyncio.gather(*(collect_async(ch, q) for _, ch, q in subscribers))
    assert [[body for _, body in got] for got in results] == [LOGS, LOGS]
    await subscribers[0][0].close()
    connection = await aconnect(db_path)
    with pytest.raises(mqstore.NotFoundError) as missing:
        await (await connection.channel()).queue_declare(names[0], passive=True)
    assert missing.value.reply_code == 404
    await connection.close()
    await subscribers[1][0].close()


# --- 4. routing ------------------------------------------------------------------------------

SEVERITY_LOGS = [("info", b"i"), ("warning", b"w"), ("error", b"e"), ("debug", b"d")]
ROUTING_SUBSCRIBERS = {"errors_only": ["error"], "console": ["info", "warning", "error"]}
ROUTING_EXPECTED = {
    "errors_only": [("error", b"e")],
    "console": [("info", b"i"), ("warning", b"w"), ("error", b"e")],
}


def test_routing_blocking__direct_exchange_delivers_by_bound_severity(db_path: str) -> None:
    subscribers = {}
    for name, severities in ROUTING_SUBSCRIBERS.items():
        connection = connect(db_path)
        channel = connection.channel()
        channel.exchange_declare(exchange="direct_logs", exchange_type="direct")
        queue_name = channel.queue_declare(queue="", exclusive=True).method.queue
        for severity in severities:
            channel.queue_bind(exchange="direct_logs", queue=queue_name, routing_key=severity)
        subscribers[name] = (connection, channel, queue_name)

    with connect(db_path) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange="direct_logs", exchange_type="direct")
        for severity, message in [*SEVERITY_LOGS, ("error", STOP)]:
            channel.basic_publish(exchange="direct_logs", routing_key=severity, body=message)

    got = {name: collect_blocking(ch, q) for name, (_, ch, q) in subscribers.items()}
    assert got == ROUTING_EXPECTED
    for connection, _, _ in subscribers.values():
        connection.close()


async def test_routing_asyncio__direct_exchange_delivers_by_bound_severity(db_path: str) -> None:
    subscribers = {}
    for name, severities in ROUTING_SUBSCRIBERS.items():
        connection = await aconnect(db_path)
        channel = await connection.channel()
        await channel.exchange_declare(exchange="direct_logs", exchange_type="direct")
        queue_name = (await channel.queue_declare(queue="", exclusive=True)).method.queue
        for severity in severities:
            await channel.queue_bind(exchange="direct_logs", queue=queue_name, routing_key=severity)
        subscribers[name] = (connection, channel, queue_name)

    publisher = await aconnect(db_path)
    channel = await publisher.channel()
    await channel.exchange_declare(exchange="direct_logs", exchange_type="direct")
    for severity, message in [*SEVERITY_LOGS, ("error", STOP)]:
        await channel.basic_publish(exchange="direct_logs", routing_key=severity, body=message)
    await publisher.close()

    got = {name: await collect_async(ch, q) for name, (_, ch, q) in subscribers.items()}
    assert got == ROUTING_EXPECTED
    for connection, _, _ in subscribers.values():
        await connection.close()


# --- 5. topics -------------------------------------------------------------------------------

TOPIC_SUBSCRIBERS = {
    "Q1": ["*.orange.*"],
    "Q2": ["*.*.rabbit", "lazy.#"],
    "all": ["#"],
    "kern": ["kern.*"],
}
TOPIC_KEYS = [
    "quick.orange.rabbit",
    "lazy.orange.elephant",
    "quick.orange.fox",
    "lazy.brown.fox",
    "lazy.pink.rabbit",  # matches both of Q2's bindings: delivered once
    "quick.brown.fox",  # matches nothing but '#'
    "orange",  # '*' is exactly one word
    "quick.orange.male.rabbit",
    "lazy.orange.male.rabbit",  # '#' spans several words
    "lazy",  # '#' matches zero words
    "kern.critical",
    "kern.critical.disk",  # one word too many for 'kern.*'
]
TOPIC_EXPECTED = {
    "Q1": ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"],
    "Q2": [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "lazy.orange.male.rabbit",
        "lazy",
    ],
    "all": TOPIC_KEYS,
    "kern": ["kern.critical"],
}
# Routed to every subscriber above, last: once it arrives, everything before it has.
TOPIC_STOP_KEYS = ["stop.orange.rabbit", "kern.stop"]


def _topic_received(got: list[tuple[str, bytes]]) -> list[str]:
    assert all(body == key.encode() for key, body in got)
    return [key for key, _ in got]


def test_topics_blocking__star_matches_one_word_and_hash_matches_zero_or_more(
    db_path: str,
) -> None:
    subscribers = {}
    for name, binding_keys in TOPIC_SUBSCRIBERS.items():
        connection = connect(db_path)
        channel = connection.channel()
        channel.exchange_declare(exchange="topic_logs", exchange_type="topic")
        queue_name = channel.queue_declare("", exclusive=True).method.queue
        for binding_key in binding_keys:
            channel.queue_bind(exchange="topic_logs", queue=queue_name, routing_key=binding_key)
        subscribers[name] = (connection, channel, queue_name)

    with connect(db_path) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange="topic_logs", exchange_type="topic")
        for routing_key in TOPIC_KEYS:
            channel.basic_publish("topic_logs", routing_key, routing_key.encode())
        for routing_key in TOPIC_STOP_KEYS:
            channel.basic_publish("topic_logs", routing_key, STOP)

    got = {n: _topic_received(collect_blocking(ch, q)) for n, (_, ch, q) in subscribers.items()}
    assert got == TOPIC_EXPECTED
    for connection, _, _ in subscribers.values():
        connection.close()


async def test_topics_asyncio__star_matches_one_word_and_hash_matches_zero_or_more(
    db_path: str,
) -> None:
    subscribers = {}
    for name, binding_keys in TOPIC_SUBSCRIBERS.items():
        connection = await aconnect(db_path)
        channel = await connection.channel()
        await channel.exchange_declare(exchange="topic_logs", exchange_type="topic")
        queue_name = (await channel.queue_declare("", exclusive=True)).method.queue
        for binding_key in binding_keys:
            await channel.queue_bind(
                exchange="topic_logs", queue=queue_name, routing_key=binding_key
            )
        subscribers[name] = (connection, channel, queue_name)

    publisher = await aconnect(db_path)
    channel = await publisher.channel()
    await channel.exchange_declare(exchange="topic_logs", exchange_type="topic")
    for routing_key in TOPIC_KEYS:
        await channel.basic_publish("topic_logs", routing_key, routing_key.encode())
    for routing_key in TOPIC_STOP_KEYS:
        await channel.basic_publish("topic_logs", routing_key, STOP)
    await publisher.close()

    got = {}
    for name, (_, channel, queue_name) in subscribers.items():
        got[name] = _topic_received(await collect_async(channel, queue_name))
    assert got == TOPIC_EXPECTED
    for connection, _, _ in subscribers.values():
        await connection.close()


# --- 6. RPC ----------------------------------------------------------------------------------


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


FIB_CASES = {0: 0, 1: 1, 2: 1, 10: 55, 20: 6765}


class FibonacciRpcClient:
    """The tutorial's rpc_client.py, bounded in time instead of waiting forever."""

    def __init__(self, path: str) -> None:
        self.connection = connect(path)
        self.channel = self.connection.channel()
        result = self.channel.queue_declare(queue="", exclusive=True)
        self.callback_queue = result.method.queue
        self.channel.basic_consume(
            queue=self.callback_queue, on_message_callback=self.on_response, auto_ack=True
        )
        self.response: bytes | None = None
        self.corr_id: str | None = None
        self.ignored: list[bytes] = []

    def on_response(self, ch: Any, method: Any, props: BasicProperties, body: bytes) -> None:
        if self.corr_id == props.correlation_id:
            self.response = body
        else:
            self.ignored.append(body)

    def call(self, n: int) -> int:
        self.response = None
        self.corr_id = str(uuid.uuid4())
        self.channel.basic_publish(
            exchange="",
            routing_key="rpc_queue",
            properties=BasicProperties(reply_to=self.callback_queue, correlation_id=self.corr_id),
            body=str(n),
        )
        deadline = time.monotonic() + WAIT_S
        while self.response is None:
            assert time.monotonic() < deadline, f"no reply to fib({n})"
            self.connection.process_data_events(time_limit=1)
        return int(self.response)


def test_rpc_blocking__server_thread_replies_to_reply_to_with_matching_correlation_id(
    db_path: str,
) -> None:
    handles: list[tuple[Any, Any]] = []
    ready = threading.Event()
    served_on: set[int] = set()

    def rpc_server() -> None:
        connection = connect(db_path)
        channel = connection.channel()
        channel.queue_declare(queue="rpc_queue")

        def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
            served_on.add(threading.get_ident())
            response = fib(int(body))
            ch.basic_publish(
                exchange="",
                routing_key=props.reply_to,
                properties=BasicProperties(correlation_id=props.correlation_id),
                body=str(response),
            )
            ch.basic_ack(delivery_tag=method.delivery_tag)

        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue="rpc_queue", on_message_callback=on_request)
        handles.append((connection, channel))
        ready.set()
        try:
            channel.start_consuming()
        finally:
            connection.close()

    with running(rpc_server) as server:
        assert ready.wait(WAIT_S)
        client = FibonacciRpcClient(db_path)
        # A stale reply already in the callback queue must be ignored by correlation id
        with connect(db_path) as other:
            other.channel().basic_publish(
                "",
                client.callback_queue,
                b"-1",
                properties=BasicProperties(correlation_id="stale"),
            )
        results = {n: client.call(n) for n in FIB_CASES}
        stop_consuming_from_outside(*handles[0])
    client.connection.close()
    assert results == FIB_CASES
    assert client.ignored == [b"-1"]
    assert served_on == {server.ident}
    assert ready_count(db_path, "rpc_queue") == 0


async def test_rpc_asyncio__server_task_replies_to_concurrent_calls_by_correlation_id(
    db_path: str,
) -> None:
    ready = asyncio.Event()

    async def rpc_server() -> None:
        connection = await aconnect(db_path)
        try:
            channel = await connection.channel()
            await channel.queue_declare(queue="rpc_queue")
            await channel.basic_qos(prefetch_count=1)
            ready.set()
            async for request in channel.consume("rpc_queue"):
                await channel.basic_publish(
                    exchange="",
                    routing_key=request.properties.reply_to,
                    properties=BasicProperties(correlation_id=request.properties.correlation_id),
                    body=str(fib(int(request.body))),
                )
                await request.ack()
        finally:
            await connection.close()

    server = asyncio.create_task(rpc_server())
    await asyncio.wait_for(ready.wait(), WAIT_S)

    client = await aconnect(db_path)
    channel = await client.channel()
    callback_queue = (await channel.queue_declare(queue="", exclusive=True)).method.queue
    futures: dict[str, asyncio.Future[bytes]] = {}
    ignored: list[bytes] = []

    def on_response(ch: Any, method: Any, props: BasicProperties, body: bytes) -> None:
        future = futures.pop(props.correlation_id or "", None)
        if future is None:
            ignored.append(body)
        else:
            future.set_result(body)

    await channel.basic_consume(callback_queue, on_response, auto_ack=True)
    await channel.basic_publish(
        "", callback_queue, b"-1", properties=BasicProperties(correlation_id="stale")
    )

    async def call(n: int) -> int:
        corr_id = str(uuid.uuid4())
        futures[corr_id] = asyncio.get_running_loop().create_future()
        await channel.basic_publish(
            exchange="",
            routing_key="rpc_queue",
            properties=BasicProperties(reply_to=callback_queue, correlation_id=corr_id),
            body=str(n),
        )
        return int(await asyncio.wait_for(futures[corr_id], WAIT_S))

    # Concurrent calls: replies are matched to callers only by correlation_id
    results = await asyncio.gather(*(call(n) for n in FIB_CASES))
    await stop_task(server)
    await client.close()
    assert dict(zip(FIB_CASES, results, strict=True)) == FIB_CASES
    assert ignored == [b"-1"]
    assert not futures
    assert ready_count(db_path, "rpc_queue") == 0
