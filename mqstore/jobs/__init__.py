"""A thin job queue for embedded use, on the mqstore core (docs/jobs.md).

::

    # tasks.py
    import mqstore.jobs
    app = mqstore.jobs.App("broker.db")

    @app.task(retries=3, backoff=2.0)
    def send_email(to, subject):
        ...

    send_email.delay("a@example.com", "hi")            # enqueue now
    send_email.apply_async(("b@example.com", "later"), countdown=60)

    # shell: mqstore worker tasks:app --concurrency 4

A task message is an ordinary mqstore message in the app's queue (default ``mqstore.jobs``):
the body is ``{"args": [...], "kwargs": {...}}`` in the app's serializer (JSON by default);
headers carry the task name and attempt. A failure republishes the message with a delay
(exponential backoff) and acks the failed one; past ``retries`` the message is rejected and
dead-lettered to ``<queue>.dead`` with RabbitMQ's ``x-death`` header.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import blocking
from ..types import BasicProperties

__all__ = ["App", "JSONSerializer", "Result", "Serializer", "Task", "TaskFailed"]

log = logging.getLogger(__name__)


class Serializer(Protocol):
    """How task arguments (and results) become bytes: ``dumps``/``loads`` and the
    ``content_type`` written on the message."""

    content_type: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    content_type = "application/json"

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class TaskFailed(Exception):
    """Raised by :meth:`Result.get` when the task failed for good (retries exhausted)."""


@dataclass
class Task:
    """A registered function. Call it to run it here; ``delay``/``apply_async`` to enqueue."""

    app: App
    fn: Callable[..., Any]
    name: str
    retries: int
    backoff: float
    max_backoff: float

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> Result:
        """Enqueue ``fn(*args, **kwargs)`` to run as soon as a worker is free."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple | list = (),
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: float | None = None,
    ) -> Result:
        """Enqueue with options: ``countdown`` seconds from now, or at ``eta`` (a Unix
        timestamp); both are delayed deliveries, stored at once and durable."""
        if eta is not None:
            countdown = max(0.0, eta - time.time())
        return self.app._enqueue(self, list(args), dict(kwargs or {}), countdown)

    def backoff_for(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1, 2, ...): backoff * 2^(attempt-1)."""
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1))


class Result:
    """A handle on an enqueued task's outcome (only with ``App(results=True)``)."""

    def __init__(self, app: App, task_id: str) -> None:
        self.app = app
        self.id = task_id

    def ready(self) -> bool:
        return self.app._result(self.id) is not None

    def get(self, timeout: float = 30.0, poll: float = 0.02) -> Any:
        """The task's return value; raises TaskFailed if it failed for good, TimeoutError
        if it has not finished within ``timeout`` seconds."""
        if not self.app.results:
            raise RuntimeError("results are off: create the App with results=True")
        deadline = time.monotonic() + timeout
        while True:
            row = self.app._result(self.id)
            if row is not None:
                status, data = row
                value = self.app.serializer.loads(data)
                if status == "failed":
                    raise TaskFailed(value)
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.id} has no result after {timeout:g} s")
            time.sleep(poll)

    def __repr__(self) -> str:
        return f"<Result {self.id}>"


RESULTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS mqjobs_results (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
    "value BLOB NOT NULL, finished_at REAL NOT NULL)"
)


class App:
    """Tasks, their queue and how to run them.

    Args:
        path: the mqstore file (the broker).
        queue: the queue task messages go to; failed-for-good ones go to ``<queue>.dead``.
        serializer: arguments and results codec (JSON by default; any object with
            ``dumps``, ``loads``, ``content_type``).
        results: keep each task's return value (or final error) in the table
            ``mqjobs_results`` of the same file, for :meth:`Result.get`.
        durability: as ConnectionParameters ("full": enqueue returns after an fsync).
    """

    def __init__(
        self,
        path: str,
        *,
        queue: str = "mqstore.jobs",
        serializer: Serializer | None = None,
        results: bool = False,
        durability: str = "full",
    ) -> None:
        self.path = path
        self.queue = queue
        self.dead_queue = queue + ".dead"
        self.serializer: Serializer = serializer or JSONSerializer()
        self.results = results
        self.durability = durability
        self.tasks: dict[str, Task] = {}
        self._local = threading.local()
        self._declared: set[int] = set()

    # --- registering --------------------------------------------------------------------

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        max_backoff: float = 3600.0,
    ) -> Any:
        """Register a function as a task (``@app.task`` or ``@app.task(retries=3)``).

        ``retries``: how many times a failing task is retried (so ``retries + 1`` attempts
        at most) before it is dead-lettered; ``backoff``: seconds before the first retry,
        doubled for each further one, at most ``max_backoff``."""
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")

        def register(func: Callable[..., Any]) -> Task:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            task = Task(self, func, task_name, retries, backoff, max_backoff)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    # --- connections (one per thread and process) ---------------------------------------------

    def channel(self) -> blocking.BlockingChannel:
        """This thread's channel to the broker (opened, and the queues declared, on first
        use; a forked child opens its own)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or not local.channel.is_open:
            conn = blocking.BlockingConnection(
                blocking.ConnectionParameters(path=self.path, durability=self.durability)
            )
            local.pid = os.getpid()
            local.conn = conn
            local.channel = conn.channel()
            self._declare(local.channel)
        return local.channel

    def _declare(self, ch: blocking.BlockingChannel) -> None:
        ch.queue_declare(self.dead_queue, durable=True)
        ch.queue_declare(
            self.queue,
            durable=True,
            arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead_queue,
            },
        )

    def close(self) -> None:
        """Close this thread's connection (workers close their own)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local = threading.local()

    # --- enqueueing ----------------------------------------------------------------------

    def _enqueue(
        self,
        task: Task,
        args: list,
        kwargs: dict[str, Any],
        countdown: float | None,
        *,
        attempt: int = 0,
        task_id: str | None = None,
    ) -> Result:
        task_id = task_id or uuid.uuid4().hex
        body = self.serializer.dumps({"args": args, "kwargs": kwargs})
        self._publish(task.name, task_id, body, attempt, countdown)
        return Result(self, task_id)

    def _publish(
        self, name: str, task_id: str, body: bytes, attempt: int, countdown: float | None
    ) -> None:
        props = BasicProperties(
            content_type=self.serializer.content_type,
            delivery_mode=2,
            message_id=task_id,
            headers={"task": name, "attempt": attempt},
        )
        self.channel().basic_publish(
            "", self.queue, body, props, mandatory=True, delay=countdown or None
        )

    # --- results -------------------------------------------------------------------------

    def _results_db(self) -> sqlite3.Connection:
        local = self._local
        db = getattr(local, "results_db", None)
        if db is None or getattr(local, "results_pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            if self.results:
                db.execute(RESULTS_TABLE)
            local.results_db = db
            local.results_pid = os.getpid()
        return db

    def _store_result(self, task_id: str, status: str, value: Any) -> None:
        self._results_db().execute(
            "INSERT OR REPLACE INTO mqjobs_results VALUES (?, ?, ?, ?)",
            (task_id, status, self.serializer.dumps(value), time.time()),
        )

    def _result(self, task_id: str) -> tuple[str, bytes] | None:
        row = (
            self._results_db()
            .execute("SELECT status, value FROM mqjobs_results WHERE id = ?", (task_id,))
            .fetchone()
        )
        return None if row is None else (row[0], row[1])

    # --- working -------------------------------------------------------------------------

    def handle(self, ch: blocking.BlockingChannel, method: Any, props: Any, body: bytes) -> None:
        """Run one task message: ack on success; on failure retry later or dead-letter."""
        headers = props.headers or {}
        name = headers.get("task")
        attempt = int(headers.get("attempt") or 0)
        task = self.tasks.get(name)  # type: ignore[arg-type]
        task_id = props.message_id or ""
        if task is None:
            log.error("unknown task %r: dead-lettered", name)
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        try:
            payload = self.serializer.loads(body)
            value = task.fn(*payload.get("args", ()), **payload.get("kwargs", {}))
        except Exception as exc:
            if attempt < task.retries:
                delay = task.backoff_for(attempt + 1)
                log.warning(
                    "task %s[%s] failed (attempt %d of %d), retry in %.3g s: %r",
                    name, task_id, attempt + 1, task.retries + 1, delay, exc,
                )  # fmt: skip
                # The retry is stored before the failed message is acked: a crash in between
                # runs the task once more (at-least-once), never loses it.
                self._publish(task.name, task_id, body, attempt + 1, delay)
                ch.basic_ack(method.delivery_tag)
            else:
                log.error("task %s[%s] failed for good: %r", name, task_id, exc)
                if self.results:
                    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                    self._store_result(task_id, "failed", text)
                ch.basic_reject(method.delivery_tag, requeue=False)  # -> <queue>.dead
            return
        if self.results:
            self._store_result(task_id, "done", value)
        ch.basic_ack(method.delivery_tag)

    def work(
        self,
        *,
        stop: threading.Event | None = None,
        burst: bool = False,
        prefetch: int = 1,
    ) -> int:
        """Run tasks on this thread until ``stop`` is set (or, with ``burst``, until the
        queue has nothing ready or scheduled left). Returns the number of messages handled."""
        from .worker import work_loop

        return work_loop(self, stop=stop, burst=burst, prefetch=prefetch)

    def pending(self) -> int:
        """Task messages ready now (scheduled ones and retries waiting are not counted)."""
        return self.channel().queue_declare(self.queue, passive=True).method.message_count

    def scheduled(self) -> int:
        """Task messages waiting for their time (countdown, eta, retries in backoff)."""
        db = self._results_db()
        row = db.execute(
            "SELECT count(*) FROM mq_entries e JOIN mq_queues q ON q.id = e.queue_id "
            "WHERE q.name = ? AND e.deliver_at_ms IS NOT NULL",
            (self.queue,),
        ).fetchone()
        return int(row[0])
