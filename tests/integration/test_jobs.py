"""The job layer (mqstore.jobs): tasks, JSON and pluggable serializers, retries with
exponential backoff through delayed redelivery, dead-lettering past the limit, scheduled
tasks, optional results, and ``mqstore worker`` with threads and processes."""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import mqstore
import mqstore.jobs
from mqstore.jobs import App, TaskFailed


@pytest.fixture
def app(db_path):
    application = App(db_path, results=True)
    yield application
    application.close()


def test_enqueue_and_work(app):
    seen = []

    @app.task
    def add(x, y=0):
        seen.append((x, y))
        return x + y

    results = [add.delay(i, y=1) for i in range(5)]
    assert app.pending() == 5
    assert app.work(burst=True) == 5
    assert seen == [(i, 1) for i in range(5)]
    assert [r.get(timeout=1) for r in results] == [1, 2, 3, 4, 5]
    assert add(2, 3) == 5  # still a plain function


def test_retries_with_exponential_backoff_then_success(app):
    attempts = []

    @app.task(retries=3, backoff=0.1)
    def flaky():
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return "ok"

    result = flaky.delay()
    app.work(burst=True)
    assert result.get(timeout=1) == "ok"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 3
    assert 0.1 <= gaps[0] < 0.6 and 0.2 <= gaps[1] < 0.8  # 0.1 s, then 0.2 s


def test_max_attempts_dead_letters(app, db_path):
    calls = []

    @app.task(retries=2, backoff=0.01)
    def doomed(x):
        calls.append(x)
        raise ValueError("bad input")

    result = doomed.delay(7)
    app.work(burst=True)
    assert calls == [7, 7, 7]  # retries + 1 attempts
    with pytest.raises(TaskFailed, match="bad input"):
        result.get(timeout=1)
    ch = app.channel()
    method, props, body = ch.basic_get(app.dead_queue, auto_ack=True)
    assert method is not None
    assert props.headers["task"].endswith("doomed")
    assert props.headers["attempt"] == 2
    assert props.headers["x-death"][0]["reason"] == "rejected"
    assert app.serializer.loads(body) == {"args": [7], "kwargs": {}}


def test_unknown_task_is_dead_lettered(app, db_path):
    other = App(db_path)

    @other.task(name="nobody.handles.this")
    def ghost():
        pass

    ghost.delay()
    other.close()
    app.work(burst=True)
    _method, props, _ = app.channel().basic_get(app.dead_queue, auto_ack=True)
    assert props.headers["task"] == "nobody.handles.this"


def test_scheduled_tasks(app):
    ran = []

    @app.task
    def tick(n):
        ran.append((n, time.monotonic()))

    start = time.monotonic()
    tick.apply_async((1,), countdown=0.3)
    tick.apply_async((2,), eta=time.time() + 0.1)
    tick.delay(0)
    assert app.pending() == 1 and app.scheduled() == 2
    app.work(burst=True)
    assert [n for n, _ in ran] == [0, 2, 1]
    assert ran[2][1] - start >= 0.29


def test_pluggable_serializer(db_path):
    class PickleSerializer:
        content_type = "application/x-python-pickle"

        def dumps(self, value):
            return pickle.dumps(value)

        def loads(self, data):
            return pickle.loads(data)

    app = App(db_path, serializer=PickleSerializer(), results=True, queue="pickled")

    @app.task
    def union(a, b):
        return a | b

    result = union.delay({1}, {2})
    app.work(burst=True)
    assert result.get(timeout=1) == {1, 2}
    app.close()


def test_results_are_optional(db_path):
    app = App(db_path)

    @app.task
    def noop():
        return 1

    result = noop.delay()
    app.work(burst=True)
    with pytest.raises(RuntimeError, match="results are off"):
        result.get()
    app.close()


def test_worker_threads_stop_event(app):
    done = []

    @app.task
    def job(i):
        done.append(i)

    for i in range(20):
        job.delay(i)
    stop = threading.Event()
    workers = [threading.Thread(target=app.work, kwargs={"stop": stop}) for _ in range(3)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 10
    while len(done) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    for w in workers:
        w.join(10)
    assert sorted(done) == list(range(20))


TASKS = """
import os, mqstore.jobs
app = mqstore.jobs.App({db!r}, results=True)

@app.task(retries=1, backoff=0.05)
def square(x):
    if x == 3 and not os.path.exists({flag!r}):
        open({flag!r}, "w").close()
        raise RuntimeError("first try of 3 fails")
    return (x * x, os.getpid())
"""


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_mqstore_worker_command(tmp_path: Path, db_path, pool):
    module = f"jobs_tasks_{pool}"
    flag = str(tmp_path / "flag")
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(TASKS.format(db=db_path, flag=flag)))
    sys.path.insert(0, str(tmp_path))
    try:
        tasks = __import__(module)
        results = [tasks.square.delay(i) for i in range(8)]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mqstore",
                "worker",
                f"{module}:app",
                "-c",
                "2",
                "--pool",
                pool,
                "--burst",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        values = [r.get(timeout=5) for r in results]
        assert [v[0] for v in values] == [i * i for i in range(8)]
        if pool == "threads":
            assert len({v[1] for v in values}) == 1
        tasks.app.close()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


def test_app_is_importable_from_the_package():
    assert mqstore.jobs.App is App
