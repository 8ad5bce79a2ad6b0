"""Running tasks: one consumer per thread, in threads or processes
(``mqstore worker module:app --concurrency N --pool processes|threads``)."""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


def load_app(spec: str) -> Any:
    """``package.module:attribute`` -> the App object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected module:app, not {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


def work_loop(
    app: Any, *, stop: threading.Event | None = None, burst: bool = False, prefetch: int = 1
) -> int:
    """Consume the app's queue on this thread, one task at a time per prefetch slot."""
    stop = stop or threading.Event()
    ch = app.channel()
    ch.basic_qos(prefetch_count=prefetch)
    handled = 0

    def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
        nonlocal handled
        handled += 1
        app.handle(channel, method, props, body)

    tag = ch.basic_consume(app.queue, on_message)
    try:
        while not stop.is_set():
            ch.connection.process_data_events(time_limit=0.1)
            if burst and app.pending() == 0 and app.scheduled() == 0:
                ch.connection.process_data_events(time_limit=0)
                if app.pending() == 0 and app.scheduled() == 0:
                    break
    finally:
        if ch.is_open:
            ch.basic_cancel(tag)
        app.close()
    return handled


def _thread_pool(app: Any, concurrency: int, stop: threading.Event, burst: bool) -> None:
    threads = [
        threading.Thread(
            target=work_loop,
            args=(app,),
            kwargs={"stop": stop, "burst": burst},
            name=f"mqstore-jobs-{i}",
            daemon=True,
        )
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)


def _child(spec: str, burst: bool) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    work_loop(load_app(spec), stop=stop, burst=burst)


def run(
    spec: str,
    *,
    concurrency: int = 1,
    pool: str = "processes",
    burst: bool = False,
    stop: threading.Event | None = None,
) -> None:
    """Run ``concurrency`` workers for the app ``spec`` (module:app) until SIGTERM/SIGINT
    (or ``stop``); each finishes its current task first. Processes are spawned (not
    forked), so each opens the broker itself."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if pool not in ("processes", "threads"):
        raise ValueError("pool must be 'processes' or 'threads'")
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    if pool == "threads":
        _thread_pool(load_app(spec), concurrency, stop, burst)
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_child, args=(spec, burst), name=f"mqstore-jobs-{i}")
        for i in range(concurrency)
    ]
    for proc in procs:
        proc.start()
    try:
        while any(p.is_alive() for p in procs) and not stop.is_set():
            stop.wait(0.2)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the child finishes its current task
        for proc in procs:
            proc.join()
