"""The engine's wake signal (flush thread, blocking connections): Event semantics for one
waiting thread."""

from __future__ import annotations

import threading

from mqstore.engine import Wake


def test_wake_is_an_event_for_one_waiter() -> None:
    wake = Wake()
    assert wake.wait(0) is False
    wake.set()
    wake.set()  # setting twice is harmless
    assert wake.wait(0) is True
    assert wake.wait(0) is True  # stays set until cleared
    wake.clear()
    wake.clear()
    assert wake.wait(0.01) is False


def test_set_from_another_thread_wakes_the_waiter() -> None:
    wake = Wake()
    woke = threading.Event()

    def waiter() -> None:
        if wake.wait(10):
            woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    wake.set()
    thread.join(10)
    assert woke.is_set()


def test_racing_sets_and_waits_never_raise() -> None:
    wake = Wake()
    errors: list[BaseException] = []
    stop = threading.Event()

    def setter() -> None:
        try:
            while not stop.is_set():
                wake.set()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=setter) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(100):
            wake.wait(0.1)
            wake.clear()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
