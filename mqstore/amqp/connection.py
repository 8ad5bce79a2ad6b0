"""One AMQP client connection: handshake, frame routing to channels, heartbeats, closing.

The reader never waits on the store: channel methods are queued to each channel's worker
(:mod:`mqstore.amqp.channel`), so heartbeats and other channels keep flowing while a commit
is in progress. Only the handshake's Connection.Open waits, to open the session.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from typing import TYPE_CHECKING, Any

from pamqp import commands, decode

from ..state import ConnectionSettings
from . import framing
from .channel import AMQPChannel
from .replies import Fault, fault_for, method_ids

if TYPE_CHECKING:
    from ..engine import Engine
    from .server import Server

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0
WATCHDOG_INTERVAL_S = 0.5


class _Content:
    """A Basic.Publish whose content header and body frames are still arriving."""

    __slots__ = ("chunks", "header", "method", "raw", "received", "too_large")

    def __init__(self, method: Any) -> None:
        self.method = method
        self.header: Any = None
        self.raw = b""
        self.chunks: list[bytes] = []
        self.received = 0
        self.too_large = False


class AMQPConnection:
    """Serves one client socket until it closes, errs or the server shuts down."""

    def __init__(
        self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.config = server.config
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._peer_host = peer[0] if isinstance(peer, tuple) else ""
        self.frame_max = self.config.frame_max
        self.channel_max = self.config.channel_max
        self.heartbeat = 0
        self.settings = ConnectionSettings(durability=self.config.durability)
        self.engine: Engine | None = None  # type: ignore[assignment]
        self.session = 0
        self.cancel_notify = False
        self.blocked_notify = False  # the client understands Connection.Blocked
        self._paused = False  # reading stopped: a publish waits for disk space
        self.user = ""
        self.vhost = ""
        self.phase = "start"
        self.channels: dict[int, AMQPChannel] = {}
        self.closing = False
        self._broken = False  # framing lost: read no more frames
        self._content: dict[int, _Content] = {}
        self._last_read = self.loop.time()
        self._last_write = self._last_read
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []

    # --- output ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.writer.transport.is_closing():
            return
        self.writer.write(data)
        self._last_write = self.loop.time()

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError, AssertionError):
            pass

    def _abort(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.close()

    def fail(self, fault: Fault) -> None:
        """A connection error: send Connection.Close, discard all but Close/CloseOk, and
        drop the socket when the client answers (or after a short wait)."""
        if self.closing:
            return
        self.closing = True
        level = logging.INFO if fault.code in (200, 320) else logging.WARNING
        log.log(
            level,
            "closing connection %s: %s %s",
            self.peer,
            fault.code,
            fault.text,
            extra={"action": "connection_close", "code": fault.code, "peer": self.peer},
        )
        close = commands.Connection.Close(
            fault.code, fault.text[:255], fault.class_id, fault.method_id
        )
        self.write(framing.method_frame(0, close))
        self._timers.append(self.loop.call_later(CLOSE_TIMEOUT_S, self._abort))

    def force_close(self, reason: str = "shutdown") -> None:
        """Server shutdown: 320 CONNECTION_FORCED, as RabbitMQ sends it."""
        if self.phase != "running":
            self._abort()
            return
        self.fail(
            Fault(
                320, f"CONNECTION_FORCED - broker forced connection closure with reason '{reason}'"
            )
        )

    # --- main loop ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._serve()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("connection %s failed", self.peer, extra={"action": "connection_bug"})
        finally:
            await self._cleanup()

    async def _serve(self) -> None:
        header = await asyncio.wait_for(self.reader.readexactly(8), HANDSHAKE_TIMEOUT_S)
        if header != framing.PROTOCOL_HEADER and header not in framing.LEGACY_HEADERS:
            # RabbitMQ's answer to any other protocol header: the one it speaks, then close.
            self.write(framing.PROTOCOL_HEADER)
            await self.drain()
            log.info("refused protocol header %r from %s", header, self.peer)
            return
        self._timers.append(self.loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout))
        self.write(framing.method_frame(0, self._start_method()))
        buf = bytearray()
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return
            self._last_read = self.loop.time()
            if self._broken:
                continue
            buf += data
            try:
                for frame in framing.take_frames(buf, self.frame_max):
                    try:
                        await self._on_frame(frame)
                    except Fault as fault:
                        self.fail(fault)  # framing is intact: go on, to see the CloseOk
            except Fault as fault:
                # Framing is lost (bad size or end octet): nothing more can be parsed.
                self._broken = True
                self.fail(fault)

    def _handshake_timeout(self) -> None:
        if self.phase != "running":
            log.info("handshake timeout from %s", self.peer)
            self._abort()

    async def _cleanup(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in (self._heartbeat_task, self._watchdog_task):
            if task is not None:
                task.cancel()
        self._abort()
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            await channel.shutdown()
        if self.session and self.engine is not None:
            try:
                # Requeues every unacked delivery, drops consumers and exclusive queues.
                await self.loop.run_in_executor(None, self.engine.close_session, self.session)
            except Exception as exc:
                log.warning("closing session of %s failed: %s", self.peer, exc)
        self.server.forget(self)
        if self.phase == "running":
            log.info(
                "connection closed %s",
                self.peer,
                extra={"action": "disconnect", "peer": self.peer, "user": self.user},
            )

    # --- frames ---------------------------------------------------------------------------

    async def _on_frame(self, frame: framing.Frame) -> None:
        if frame.kind == framing.FRAME_HEARTBEAT:
            return
        if self.closing:
            if isinstance(frame.obj, commands.Connection.CloseOk):
                self._abort()
            elif isinstance(frame.obj, commands.Connection.Close):
                self.write(framing.method_frame(0, commands.Connection.CloseOk()))
                self._abort()
            return
        if frame.channel == 0:
            if frame.kind != framing.FRAME_METHOD:
                raise Fault(505, "UNEXPECTED_FRAME - content frame on channel 0")
            await self._connection_method(frame.obj)
            return
        if self.phase != "running":
            raise Fault(504, "CHANNEL_ERROR - expected 'connection.open'")
        if frame.kind == framing.FRAME_METHOD:
            await self._channel_method(frame.channel, frame.obj)
        else:
            await self._content_frame(frame)

    async def _channel_method(self, number: int, method: Any) -> None:
        if number in self._content:
            raise Fault(
                505,
                "UNEXPECTED_FRAME - expected content header for class 60, "
                "got non content header frame instead",
                60,
                40,
            )
        channel = self.channels.get(number)
        if isinstance(method, commands.Channel.Open):
            if channel is not None:
                raise Fault(504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)
            if number > self.channel_max:
                raise Fault(
                    530,
                    f"NOT_ALLOWED - channel number {number} exceeds channel_max {self.channel_max}",
                    20,
                    10,
                )
            self.channels[number] = AMQPChannel(self, number)
            self.write(framing.method_frame(number, commands.Channel.OpenOk()))
            return
        if channel is None:
            raise Fault(504, "CHANNEL_ERROR - expected 'channel.open'", *method_ids(method))
        if channel.closing:
            if isinstance(method, commands.Channel.Close):
                self.write(framing.method_frame(number, commands.Channel.CloseOk()))
                channel.finish()
            elif isinstance(method, commands.Channel.CloseOk):
                channel.finish()
            return
        if isinstance(method, commands.Basic.Publish):
            if self.server.blocked:
                # As RabbitMQ under a disk alarm: stop reading from a publishing connection
                # until there is room again (its other frames wait in the socket).
                self._paused = True
                try:
                    await self.server.wait_unblocked()
                finally:
                    self._paused = False
                    self._last_read = self.loop.time()
            self._content[number] = _Content(method)
            return
        await channel.inbox.put((method, None))

    async def _content_frame(self, frame: framing.Frame) -> None:
        number = frame.channel
        pending = self._content.get(number)
        if pending is None or (frame.kind == framing.FRAME_HEADER) == (pending.header is not None):
            channel = self.channels.get(number)
            if pending is None and channel is not None and channel.closing:
                return  # content of a publish discarded after Channel.Close
            raise Fault(
                505, "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
            )
        if frame.kind == framing.FRAME_HEADER:
            pending.header = frame.obj
            pending.raw = frame.raw_properties
            pending.too_large = frame.obj.body_size > self.settings.max_message_size
        else:
            pending.received += len(frame.obj)
            if not pending.too_large:
                pending.chunks.append(frame.obj)
            if pending.received > pending.header.body_size:
                raise Fault(501, "FRAME_ERROR - body larger than the content header's body size")
        if pending.received < pending.header.body_size:
            return
        del self._content[number]
        channel = self.channels[number]
        if pending.too_large:
            size = pending.header.body_size
            error = channel.state.settings.max_message_size
            from .. import errors

            content: Any = errors.MessageTooLargeError(
                f"PRECONDITION_FAILED - message size {size} is larger than configured "
                f"max size {error}"
            )
        else:
            props = framing.to_properties(pending.header.properties, pending.raw)
            content = (props, b"".join(pending.chunks))
        await channel.inbox.put((pending.method, content))

    def notify_blocked(self, blocked: bool) -> None:
        """Tell a client that asked for it that publishing is blocked (or free again)."""
        if self.phase != "running" or self.closing or not self.blocked_notify:
            return
        if blocked:
            method: Any = commands.Connection.Blocked("low on disk space")
        else:
            method = commands.Connection.Unblocked()
        self.write(framing.method_frame(0, method))

    def channel_finished(self, channel: AMQPChannel) -> None:
        if self.channels.get(channel.number) is channel:
            del self.channels[channel.number]
        self._content.pop(channel.number, None)

    # --- connection class -----------------------------------------------------------------

    def _start_method(self) -> commands.Connection.Start:
        return commands.Connection.Start(
            0, 9, self.server.server_properties(), "PLAIN AMQPLAIN", "en_US"
        )

    async def _connection_method(self, method: Any) -> None:
        phase = self.phase
        if phase == "start" and isinstance(method, commands.Connection.StartOk):
            self._start_ok(method)
        elif phase == "tune" and isinstance(method, commands.Connection.TuneOk):
            self._tune_ok(method)
        elif phase == "open" and isinstance(method, commands.Connection.Open):
            await self._open(method)
        elif isinstance(method, commands.Connection.Close):
            self.closing = True
            # Methods the client sent before Close (acks above all) are still honoured.
            for channel in list(self.channels.values()):
                await channel.shutdown()
            self.write(framing.method_frame(0, commands.Connection.CloseOk()))
            await self.drain()
            self._abort()
        elif isinstance(method, commands.Connection.CloseOk):
            self._abort()
        elif phase == "running" and isinstance(
            method, commands.Connection.Blocked | commands.Connection.Unblocked
        ):
            pass
        else:
            raise Fault(
                503,
                f"COMMAND_INVALID - unexpected {method.name} on channel 0 during {phase}",
                *method_ids(method),
            )

    def _start_ok(self, method: commands.Connection.StartOk) -> None:
        mechanism = method.mechanism
        user, password = _credentials(mechanism, method.response)
        capabilities = (method.client_properties or {}).get("capabilities") or {}
        if user is None or not self.server.authenticate(user, password, self._peer_host):
            log.warning(
                "login refused for %r from %s",
                user,
                self.peer,
                extra={"action": "login_refused", "peer": self.peer},
            )
            if not capabilities.get("authentication_failure_close"):
                # As RabbitMQ: a client that cannot take a Connection.Close here (the spec's
                # way) just sees the socket closed.
                self.closing = True
                self._abort()
                return
            raise Fault(
                403,
                f"ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. "
                "For details see the broker logfile.",
            )
        self.user = user
        self.cancel_notify = bool(capabilities.get("consumer_cancel_notify"))
        self.blocked_notify = bool(capabilities.get("connection.blocked"))
        self.phase = "tune"
        tune = commands.Connection.Tune(
            self.config.channel_max, self.config.frame_max, self.config.heartbeat
        )
        self.write(framing.method_frame(0, tune))

    def _tune_ok(self, method: commands.Connection.TuneOk) -> None:
        frame_max = method.frame_max or self.config.frame_max
        if frame_max < framing.FRAME_MIN_SIZE:
            raise Fault(
                530, f"NOT_ALLOWED - frame_max={frame_max} < {framing.FRAME_MIN_SIZE} min size"
            )
        self.frame_max = min(frame_max, self.config.frame_max)
        self.channel_max = min(method.channel_max or 65535, self.config.channel_max or 65535)
        self.heartbeat = int(method.heartbeat or 0)
        if self.heartbeat:
            self._heartbeat_task = self.loop.create_task(self._heartbeats())
        self.phase = "open"

    async def _open(self, method: commands.Connection.Open) -> None:
        vhost = method.virtual_host
        engine = await self.server.engine_for(vhost)
        if engine is None:
            raise Fault(530, f"NOT_ALLOWED - vhost {vhost} not found", 10, 40)
        self.engine = engine
        self.session = await self.loop.run_in_executor(
            None,
            engine.open_session,
            f"amqp {self.user}@{self.peer}",
            self.settings.visibility_timeout_ms,
        )
        self.vhost = vhost
        self.phase = "running"
        self._watchdog_task = self.loop.create_task(self._watchdog())
        if self.server.blocked:
            self.notify_blocked(True)
        self.write(framing.method_frame(0, commands.Connection.OpenOk()))
        log.info(
            "connection open %s user=%s vhost=%s",
            self.peer,
            self.user,
            vhost,
            extra={"action": "connect", "peer": self.peer, "user": self.user, "vhost": vhost},
        )

    async def _watchdog(self) -> None:
        """Twice a second: close channels holding a delivery past its consumer timeout."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = self.loop.time()
            for channel in list(self.channels.values()):
                channel.check_consumer_timeout(now)

    async def _heartbeats(self) -> None:
        """Send a heartbeat when nothing else went out for half the timeout; drop a peer
        silent for two timeouts (RabbitMQ drops the socket with no Close)."""
        interval = self.heartbeat / 2
        while True:
            await asyncio.sleep(min(interval / 2, 1.0))
            now = self.loop.time()
            # A connection paused by a disk alarm is not read, so its silence proves nothing.
            if not self._paused and now - self._last_read > 2 * self.heartbeat:
                log.warning(
                    "missed heartbeats from %s, closing",
                    self.peer,
                    extra={"action": "heartbeat_timeout", "peer": self.peer},
                )
                self._abort()
                return
            if now - self._last_write >= interval:
                self.write(framing.HEARTBEAT_FRAME)


def _credentials(mechanism: str, response: Any) -> tuple[str | None, str]:
    """(user, password) from a PLAIN or AMQPLAIN response; (None, '') when unreadable."""
    raw = response.encode("utf-8") if isinstance(response, str) else bytes(response or b"")
    try:
        if mechanism == "PLAIN":
            _authzid, user, password = raw.split(b"\x00", 2)
            return user.decode("utf-8"), password.decode("utf-8")
        if mechanism == "AMQPLAIN":
            # A field table without its length prefix (py-amqp's amqp/sasl.py).
            _, table = decode.field_table(struct.pack(">I", len(raw)) + raw)
            user, password = table.get("LOGIN"), table.get("PASSWORD")
            if isinstance(user, bytes):
                user = user.decode("utf-8")
            if isinstance(password, bytes):
                password = password.decode("utf-8")
            if isinstance(user, str) and isinstance(password, str):
                return user, password
    except Exception:
        pass
    return None, ""


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return bool((mapped or address).is_loopback)


__all__ = ["AMQPConnection", "fault_for", "is_loopback"]
