"""Cross-process wake-ups: a consumer waiting in one process learns at once that another
process committed messages, without polling the database.

Each process with waiting consumers binds a Unix datagram socket in Linux's abstract
namespace (no file to clean up; the kernel frees it when the process dies) and records its
name in ``mq_listeners``. A process that commits deliverable messages sends one byte to every
listener it knows. A full receive buffer means the listener is already awake, so sends never
block; a refused send means the listener is gone, and its row is dropped.

Where abstract sockets are unavailable (not Linux), :func:`supported` is False and the engine
falls back to polling ``PRAGMA data_version``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

_STOP = b"stop"


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "AF_UNIX")


def _address(name: str) -> str:
    return "\0" + name


class WakeListener:
    """Calls ``on_wake`` (on its own thread) for every wake-up datagram it receives."""

    def __init__(self, on_wake: Callable[[], None]) -> None:
        self.name = f"mqstore-{os.getpid()}-{secrets.token_hex(8)}"
        self._on_wake = on_wake
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(_address(self.name))
        self._thread = threading.Thread(target=self._loop, name="mqstore-wake", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                data = self._sock.recv(64)
            except OSError:
                return
            if data == _STOP:
                return
            try:
                self._on_wake()
            except Exception:
                log.exception("wake-up handler failed", extra={"action": "wake_failed"})

    def close(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            try:
                sender.sendto(_STOP, _address(self.name))
            except OSError:
                pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._sock.close()


class WakeSender:
    """Sends wake-ups; never blocks."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._lock = threading.Lock()

    def send(self, names: Iterable[str]) -> list[str]:
        """Wake every listener in ``names``; returns the names that no longer exist."""
        gone = []
        with self._lock:
            for name in names:
                try:
                    self._sock.sendto(b"!", _address(name))
                except BlockingIOError:
                    pass  # its buffer is full: it has wake-ups pending already
                except (ConnectionRefusedError, FileNotFoundError):
                    gone.append(name)
                except OSError as exc:
                    log.debug("wake-up to %s failed: %s", name, exc)
        return gone

    def close(self) -> None:
        self._sock.close()
