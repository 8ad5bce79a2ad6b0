"""Fixtures for the AMQP server tests: ``mqstore serve`` in a subprocess on a free port, and
a raw-socket client for the inputs no well-behaved client sends."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pamqp import commands, frame, header

START_DEADLINE_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    db: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_server(directory: Path, *extra: str) -> ServerProcess:
    """Start ``python -m mqstore serve`` and wait until it accepts connections."""
    port = free_port()
    db = str(directory / "broker.db")
    log_path = directory / f"server-{port}.log"
    cmd = [sys.executable, "-m", "mqstore", "serve", "--port", str(port), "--db", db, *extra]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, port, db, log_path)
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mqstore serve exited {proc.returncode}:\n{server.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop(signal.SIGKILL)
                raise RuntimeError(f"mqstore serve did not listen:\n{server.log()}") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the session; tests use unique queue and exchange names."""
    srv = start_server(tmp_path_factory.mktemp("amqp"))
    yield srv
    code = srv.stop()
    assert code == 0, f"server exited {code}:\n{srv.log()[-3000:]}"
    log = srv.log()
    for sign in ("connection_bug", "level=error", "Traceback"):
        assert sign not in log, log[-5000:]


@pytest.fixture
def params(server: ServerProcess) -> Any:
    import pika

    return pika.ConnectionParameters(host="127.0.0.1", port=server.port)


@pytest.fixture
def name() -> str:
    """A queue/exchange name unique to the test."""
    return f"t-{uuid.uuid4().hex[:12]}"


class RawClient:
    """Speaks AMQP frame by frame, for bad inputs and exact replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_method(self, channel: int, method: Any) -> None:
        self.send(frame.marshal(method, channel))

    def send_content(self, channel: int, body: bytes, props: Any = None) -> None:
        props = props or commands.Basic.Properties()
        self.send(frame.marshal(header.ContentHeader(0, len(body), props), channel))
        if body:
            self.send(struct.pack(">BHI", 3, channel, len(body)) + body + b"\xce")

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def recv(self, skip_heartbeats: bool = True) -> tuple[int, Any]:
        """The next frame as (channel, pamqp object); raises EOFError when closed."""
        while True:
            while len(self.buf) < 7 or len(self.buf) < 8 + struct.unpack_from(">I", self.buf, 3)[0]:
                if not self._fill():
                    raise EOFError("server closed the connection")
            size = struct.unpack_from(">I", self.buf, 3)[0]
            raw = bytes(self.buf[: size + 8])
            del self.buf[: size + 8]
            if raw[0] == 8:
                if skip_heartbeats:
                    continue
                return 0, "heartbeat"
            if raw[0] == 3:
                return raw[1] << 8 | raw[2], raw[7:-1]
            _, channel, obj = frame.unmarshal(raw)
            return channel, obj

    def expect(self, kind: type) -> Any:
        channel, obj = self.recv()
        assert isinstance(obj, kind), f"expected {kind.__name__}, got {obj!r} on {channel}"
        return obj

    def handshake(self, heartbeat: int = 0, vhost: str = "/", frame_max: int = 131072) -> None:
        self.send(b"AMQP\x00\x00\x09\x01")
        start = self.expect(commands.Connection.Start)
        assert b"PLAIN" in start.mechanisms.encode()
        self.send_method(0, commands.Connection.StartOk({}, "PLAIN", "\x00guest\x00guest"))
        self.expect(commands.Connection.Tune)
        self.send_method(0, commands.Connection.TuneOk(2047, frame_max, heartbeat))
        self.send_method(0, commands.Connection.Open(vhost))
        self.expect(commands.Connection.OpenOk)

    def open_channel(self, number: int = 1) -> None:
        self.send_method(number, commands.Channel.Open())
        self.expect(commands.Channel.OpenOk)

    def is_closed(self, within: float = 5.0) -> bool:
        """True once the server closes the socket (frames before that are skipped)."""
        self.sock.settimeout(within)
        try:
            while self._fill():
                self.buf.clear()
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True


@pytest.fixture
def raw(server: ServerProcess) -> Iterator[RawClient]:
    clients: list[RawClient] = []

    def make() -> RawClient:
        client = RawClient(server.port)
        clients.append(client)
        return client

    first = make()
    first.make = make  # type: ignore[attr-defined]
    yield first
    for client in clients:
        client.close()


def server_alive(server: ServerProcess) -> bool:
    """The server still serves a full client round trip."""
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=server.port))
    try:
        channel = conn.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"ping")
        _method, _, body = channel.basic_get(queue, auto_ack=True)
        return body == b"ping"
    finally:
        conn.close()


__all__ = ["RawClient", "ServerProcess", "server_alive", "start_server"]
