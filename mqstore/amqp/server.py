"""The listener: accepts AMQP clients, shares one engine per vhost file, shuts down cleanly.

Each vhost is a separate mqstore file (``/`` is ``--db``; more with ``--vhost NAME=PATH``),
so vhosts are fully separate namespaces, as in RabbitMQ, and each file can also be opened
by the embedded Python APIs. Users come from ``--user NAME:PASSWORD`` (or the
``MQSTORE_USERS`` environment variable, ``name:password`` pairs separated by commas);
with none configured, ``guest``/``guest`` is accepted, and as in RabbitMQ, ``guest`` only
from a loopback address.

Shutdown (SIGTERM/SIGINT): stop accepting, close every connection with 320
CONNECTION_FORCED, let in-flight commits finish, close the sessions (requeueing unacked
deliveries), release the engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import platform
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from .. import __version__, engine
from .connection import AMQPConnection, is_loopback

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0
DISK_CHECK_INTERVAL_S = 1.0

# Only what is implemented is advertised: clients switch features on from this table.
CAPABILITIES = {
    "publisher_confirms": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "per_consumer_qos": True,
    "authentication_failure_close": True,
    "exchange_exchange_bindings": True,
    "connection.blocked": True,
}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5672
    db: str = "mqstore.db"
    users: dict[str, str] = field(default_factory=dict)
    vhosts: dict[str, str] = field(default_factory=dict)
    heartbeat: int = 60
    frame_max: int = 131072
    channel_max: int = 2047
    durability: str = "full"
    # Publishers are blocked while the broker file's disk has less free space (RabbitMQ's
    # disk_free_limit default is 50 MB).
    disk_free_limit: int = 50_000_000

    def vhost_paths(self) -> dict[str, str]:
        return {"/": self.db, **self.vhosts}


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.connections: set[AMQPConnection] = set()
        self._engines: dict[str, engine.Engine] = {}
        self._engine_lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._users = dict(config.users) or {"guest": "guest"}
        self.blocked = False
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self._disk_task: asyncio.Task[None] | None = None

    def server_properties(self) -> dict[str, Any]:
        return {
            "product": "mqstore",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "information": "RabbitMQ's messaging model in one SQLite file",
            "capabilities": dict(CAPABILITIES),
        }

    def authenticate(self, user: str, password: str, peer_host: str) -> bool:
        expected = self._users.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            return False
        # RabbitMQ's loopback_users default: guest may only connect from this host.
        return user != "guest" or is_loopback(peer_host)

    async def engine_for(self, vhost: str) -> engine.Engine | None:
        path = self.config.vhost_paths().get(vhost)
        if path is None:
            return None
        async with self._engine_lock:
            found = self._engines.get(vhost)
            if found is None:
                loop = asyncio.get_running_loop()
                found = await loop.run_in_executor(None, engine.acquire, path, None)
                self._engines[vhost] = found
            return found

    def set_blocked(self, blocked: bool, free: int | None = None) -> None:
        """Enter or leave the disk alarm: publishers wait, consumers go on (acks free space)."""
        if blocked == self.blocked:
            return
        self.blocked = blocked
        if blocked:
            self._unblocked.clear()
            log.warning(
                "disk alarm: %s bytes free, below %s: publishers blocked",
                free,
                self.config.disk_free_limit,
                extra={"action": "blocked", "free": free},
            )
        else:
            self._unblocked.set()
            log.info("disk alarm cleared", extra={"action": "unblocked", "free": free})
        for conn in list(self.connections):
            conn.notify_blocked(blocked)

    async def wait_unblocked(self) -> None:
        await self._unblocked.wait()

    async def _watch_disk(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.config.db))  # noqa: ASYNC240
        loop = asyncio.get_running_loop()
        while True:
            try:
                stat = await loop.run_in_executor(None, os.statvfs, directory)
                free = stat.f_bavail * stat.f_frsize
                self.set_blocked(free < self.config.disk_free_limit, free)
            except OSError as exc:
                log.warning("disk check failed: %s", exc)
            await asyncio.sleep(DISK_CHECK_INTERVAL_S)

    async def start(self) -> None:
        path = os.path.abspath(self.config.db)  # noqa: ASYNC240 - no I/O, string work
        await self.engine_for("/")  # open (and migrate) the file before accepting anyone
        self._disk_task = asyncio.get_running_loop().create_task(self._watch_disk())
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.port, reuse_address=True
        )
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            log.info(
                "listening on %s:%s, broker file %s",
                host,
                port,
                path,
                extra={"action": "listen", "host": host, "port": port},
            )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = AMQPConnection(self, reader, writer)
        self.connections.add(conn)
        await conn.run()

    def forget(self, conn: AMQPConnection) -> None:
        self.connections.discard(conn)

    async def stop(self) -> None:
        if self._disk_task is not None:
            self._disk_task.cancel()
        self._unblocked.set()  # paused readers go on to see the close
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.force_close()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        # Connections finish their in-flight commits and close their sessions on their own.
        while self.connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        loop = asyncio.get_running_loop()
        for eng in self._engines.values():
            await loop.run_in_executor(None, engine.release, eng)
        self._engines.clear()
        log.info("stopped", extra={"action": "stopped"})


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down", extra={"action": "shutdown"})
    finally:
        await server.stop()


class KeyValueFormatter(logging.Formatter):
    """One line per event: ``ts=... level=... logger=... msg="..."`` and the record's extra
    fields as ``key=value``, so logs can be grepped and parsed alike."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        for key, value in vars(record).items():
            if key not in self._STANDARD:
                parts.append(f"{key}={_quote(str(value))}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _quote(text: str) -> str:
    if text and all(c.isalnum() or c in "-_.:/@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def parse_pairs(items: list[str], sep: str, what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, found, value = item.partition(sep)
        if not found or not name:
            raise SystemExit(f"mqstore serve: {what} must look like NAME{sep}VALUE: {item!r}")
        pairs[name] = value
    return pairs


def main(args: Any) -> int:
    """``mqstore serve``: called by the CLI with its parsed arguments."""
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(args.log_level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    users_env = [u for u in os.environ.get("MQSTORE_USERS", "").split(",") if u]
    config = ServerConfig(
        host=args.host,
        port=args.port,
        db=args.db,
        users=parse_pairs(users_env + list(args.user or []), ":", "--user"),
        vhosts=parse_pairs(list(args.vhost or []), "=", "--vhost"),
        disk_free_limit=args.disk_free_limit,
    )
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        log.error("cannot serve: %s", exc, extra={"action": "serve_failed"})
        return 1
    return 0
