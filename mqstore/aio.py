"""The asyncio API: the blocking API's method names as coroutines, plus async iteration.

::

    connection = await mqstore.aio.connect("broker.db")
    channel = await connection.channel()
    await channel.queue_declare("jobs")
    await channel.basic_publish("", "jobs", b"work")
    async for delivery in channel.consume("jobs"):
        await delivery.ack()

It drives the same channel rules (:mod:`mqstore.state`) over the same engine as the blocking
API. Commits run on the engine's flush thread, so the event loop never waits on fsync, and
concurrent coroutines share commits (group commit).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from . import engine, errors
from .blocking import ConnectionParameters
from .state import ChannelState, Consumer, Steps, drive_async
from .types import BasicProperties, Deliver, Method

_BUFFER_LIMIT = 100
# An iterator's buffer is refilled once it is down to this many deliveries, so a steady
# consumer leases in batches instead of one transaction per acknowledged message.
_REFILL_AT = 25


async def connect(path: str = ConnectionParameters.path, **options: Any) -> AsyncConnection:
    """Open (creating if needed) the broker in ``path``; options as ConnectionParameters."""
    params = ConnectionParameters(path=path, **options)
    connection = AsyncConnection(params)
    await connection._open()
    return connection


class AsyncConnection:
    """A connection to the broker in one file. Close it (or use ``async with``)."""

    def __init__(self, parameters: ConnectionParameters) -> None:
        self.params = parameters
        self._settings = parameters.settings()
        self._engine: engine.Engine | None = None
        self._session = 0
        self._channels: dict[int, AsyncChannel] = {}
        self._numbers = itertools.count(1)
        self._closed = False

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        # Opening checks and may migrate the file: off the event loop.
        self._engine = await loop.run_in_executor(
            None,
            engine.acquire,
            self.params.path,
            self.params.clock,
            self.params.disk_free_limit,
        )
        try:
            self._session = await loop.run_in_executor(
                None,
                self._engine.open_session,
                self.params.client_name,
                self._settings.visibility_timeout_ms,
            )
        except BaseException:
            engine.release(self._engine)
            raise

    @property
    def engine(self) -> engine.Engine:
        if self._engine is None or self._closed:
            raise errors.ConnectionWrongStateError("Connection is closed")
        return self._engine

    @property
    def is_open(self) -> bool:
        return not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def channel(self, channel_number: int | None = None) -> AsyncChannel:
        self.engine  # noqa: B018 - raises when closed
        number = channel_number or next(self._numbers)
        while number in self._channels:
            number = next(self._numbers)
        state = ChannelState(number, self._session, self._settings)
        state.now_ms = self.engine.clock.now_ms
        channel = AsyncChannel(self, state)
        self._channels[number] = channel
        return channel

    async def close(self) -> None:
        """Close every channel (requeueing unacked deliveries) and unregister."""
        if self._closed or self._engine is None:
            return
        for channel in list(self._channels.values()):
            await channel.close()
        self._closed = True
        eng = self._engine
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, eng.close_session, self._session)
        finally:
            await loop.run_in_executor(None, engine.release, eng)

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Delivery:
    """One message handed to a consumer, with ``ack``/``nack``/``reject`` coroutines."""

    __slots__ = ("body", "channel", "method", "properties")

    def __init__(
        self, channel: AsyncChannel, method: Any, properties: BasicProperties, body: bytes
    ) -> None:
        self.channel = channel
        self.method = method
        self.properties = properties
        self.body = body

    @property
    def delivery_tag(self) -> int:
        return int(self.method.delivery_tag)

    @property
    def redelivered(self) -> bool:
        return bool(self.method.redelivered)

    @property
    def routing_key(self) -> str:
        return str(self.method.routing_key)

    @property
    def exchange(self) -> str:
        return str(self.method.exchange)

    @property
    def delivery_count(self) -> int:
        return int(self.method.delivery_count)

    async def ack(self) -> None:
        channel = self.channel
        if not channel._ack_fresh(self.delivery_tag):
            await channel._ack(self.delivery_tag, False)

    async def nack(self, requeue: bool = True) -> None:
        await self.channel.basic_nack(self.delivery_tag, requeue=requeue)

    async def reject(self, requeue: bool = True) -> None:
        await self.channel.basic_reject(self.delivery_tag, requeue=requeue)

    def __repr__(self) -> str:
        return f"<Delivery tag={self.delivery_tag} routing_key={self.routing_key!r}>"


_END = object()


class _Buffer:
    """A ``consume()`` iterator's deliveries: the part of ``asyncio.Queue`` used here
    (``qsize``, ``empty``, ``put_nowait``, ``get_nowait``, ``get``) without its per-item
    bookkeeping, which showed in profiles of consuming. One reader: the iterator."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class AsyncChannel:
    """A channel; errors are raised by the failing call and close the channel, as in the
    blocking API."""

    def __init__(self, connection: AsyncConnection, state: ChannelState) -> None:
        self.connection = connection
        self._state = state
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._dispatcher: asyncio.Task[None] | None = None
        self._waker: Callable[[], None] | None = None
        self._buffers: dict[str, _Buffer] = {}
        self._return_callbacks: list[Callable[..., Any]] = []
        # Held while a fetch is in flight: a cancel or close waits for it, so every lease
        # it commits is tracked (and requeued by the close) instead of left stranded.
        self._fetch_lock = asyncio.Lock()

    async def _run(self, steps: Steps) -> Any:
        try:
            return await drive_async(
                steps, self.connection.engine.run_async, self.connection.engine.post
            )
        except errors.ChannelClosedByBroker as exc:
            await self._shutdown(exc)
            raise

    async def _run_exclusive(self, steps: Steps) -> Any:
        """Run ``steps`` with no fetch in flight; channel errors close it afterwards."""
        async with self._fetch_lock:
            try:
                return await drive_async(
                    steps, self.connection.engine.run_async, self.connection.engine.post
                )
            except errors.ChannelClosedByBroker as exc:
                error = exc
        await self._shutdown(error)
        raise error

    async def _shutdown(self, exc: errors.ChannelClosed | None) -> None:
        async with self._fetch_lock:
            self._stop_dispatcher()
        for tag, buffer in self._buffers.items():
            consumer = self._state.consumers.get(tag)
            if consumer is not None and not consumer.auto_ack:
                # Not yet yielded, and requeued by the close below: yielding them now would
                # hand out messages that may already be redelivered elsewhere.
                _drain(buffer)
            buffer.put_nowait(_END)
        await drive_async(
            self._state.close(exc), self.connection.engine.run_async, self.connection.engine.post
        )
        self.connection._channels.pop(self.channel_number, None)

    @property
    def channel_number(self) -> int:
        return self._state.number

    @property
    def is_open(self) -> bool:
        return self._state.is_open

    @property
    def is_closed(self) -> bool:
        return not self._state.is_open

    async def close(self) -> None:
        if self._state.is_open:
            await self._shutdown(errors.ChannelClosedByClient(0, "Normal shutdown"))

    async def __aenter__(self) -> AsyncChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def confirm_delivery(self) -> None:
        """Accepted for compatibility: every publish is confirmed by its own commit."""
        self._state.check_open()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncChannel]:
        """As the blocking ``channel.transaction()``: acks, nacks, rejects and publishes made
        on this channel inside the block (by any task) are committed together in one store
        transaction at exit, or discarded if the block raises."""
        self._state.tx_select()
        try:
            yield self
        except BaseException:
            self._state.tx_rollback(keep_open=False)
            raise
        returned = await self._run(self._state.tx_commit(keep_open=False))
        for message in returned:
            for callback in self._return_callbacks:
                await _maybe_await(callback(self, message.method, message.properties, message.body))
        self._wake.set()

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: Any = "direct",
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return await self._run(
            self._state.exchange_declare(
                exchange, exchange_type, passive, durable, auto_delete, internal, arguments
            )
        )

    async def exchange_delete(self, exchange: str | None = None, if_unused: bool = False) -> Method:
        return await self._run(self._state.exchange_delete(exchange, if_unused))

    async def queue_declare(
        self,
        queue: str,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return await self._run(
            self._state.queue_declare(queue, passive, durable, exclusive, auto_delete, arguments)
        )

    async def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False
    ) -> Method:
        return await self._run(self._state.queue_delete(queue, if_unused, if_empty))

    async def queue_purge(self, queue: str) -> Method:
        return await self._run(self._state.queue_purge(queue))

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return await self._run(self._state.queue_bind(queue, exchange, routing_key, arguments))

    async def queue_unbind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return await self._run(self._state.queue_unbind(queue, exchange, routing_key, arguments))

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return await self._run(
            self._state.exchange_bind(destination, source, routing_key, arguments)
        )

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return await self._run(
            self._state.exchange_unbind(destination, source, routing_key, arguments)
        )

    async def basic_qos(
        self, prefetch_size: int = 0, prefetch_count: int = 0, global_qos: bool = False
    ) -> None:
        await self._run(self._state.basic_qos(prefetch_size, prefetch_count, global_qos))

    async def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes | str,
        properties: BasicProperties | None = None,
        mandatory: bool = False,
        *,
        delay: float | timedelta | None = None,
    ) -> None:
        """Publish one message; returns once it is committed. UnroutableError as blocking;
        ``delay`` (keyword-only, seconds) as blocking."""
        returned = await self._run(
            self._state.basic_publish(
                exchange, routing_key, body, properties, mandatory, delay=delay
            )
        )
        if returned is not None:
            for callback in self._return_callbacks:
                await _maybe_await(
                    callback(self, returned.method, returned.properties, returned.body)
                )
            raise errors.UnroutableError([returned])

    async def basic_publish_batch(
        self,
        exchange: str,
        routing_key: str,
        bodies: Iterable[bytes | str],
        properties: BasicProperties | None = None,
        mandatory: bool = False,
    ) -> None:
        """As blocking ``basic_publish_batch``: every body in one store transaction and one
        fsync, all or nothing; UnroutableError for mandatory ones no queue took."""
        returned = await self._run(
            self._state.basic_publish_batch(exchange, routing_key, bodies, properties, mandatory)
        )
        if returned:
            for message in returned:
                for callback in self._return_callbacks:
                    await _maybe_await(
                        callback(self, message.method, message.properties, message.body)
                    )
            raise errors.UnroutableError(returned)

    def add_on_return_callback(self, callback: Callable[..., Any]) -> None:
        self._return_callbacks.append(callback)

    async def basic_get(
        self, queue: str, auto_ack: bool = False
    ) -> tuple[Any, BasicProperties | None, bytes | None]:
        return await self._run(self._state.basic_get(queue, auto_ack))

    async def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        if multiple or not self._ack_fresh(delivery_tag):
            await self._ack(delivery_tag, multiple)

    async def _ack(self, delivery_tag: int, multiple: bool) -> None:
        """basic_ack's general path (several tags, a lease not fresh, errors)."""
        await self._run(self._state.basic_ack(delivery_tag, multiple))
        self._room_freed()

    def _ack_fresh(self, delivery_tag: int) -> bool:
        """Ack one fresh delivery with no generator or coroutine in between (consuming
        acks every message); False, having done nothing, when basic_ack's path is needed."""
        engine = self.connection.engine
        call = self._state.ack_fresh(delivery_tag)
        if call is None:
            return False
        engine.post(call)
        self._room_freed()
        return True

    async def basic_nack(
        self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True
    ) -> None:
        await self._run(self._state.basic_nack(delivery_tag, multiple, requeue))
        self._room_freed()

    async def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        await self._run(self._state.basic_reject(delivery_tag, requeue))
        self._room_freed()

    async def basic_recover(self, requeue: bool = True) -> None:
        await self._run(self._state.basic_recover(requeue))
        self._room_freed()

    def _room_freed(self) -> None:
        """An ack freed prefetch room: fetch more, unless iterators still hold plenty."""
        for buffer in self._buffers.values():
            if buffer.qsize() > _REFILL_AT:
                return
        self._wake.set()

    async def basic_consume(
        self,
        queue: str,
        on_message_callback: Callable[..., Any],
        auto_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> str:
        """Call ``on_message_callback(channel, method, properties, body)`` (plain or async)
        for each delivery, from a task of this channel."""
        tag = await self._run(
            self._state.basic_consume(
                queue, on_message_callback, auto_ack, exclusive, consumer_tag, arguments
            )
        )
        self._start_dispatcher()
        return str(tag)

    async def basic_cancel(self, consumer_tag: str) -> None:
        await self._run_exclusive(self._state.basic_cancel(consumer_tag))
        buffer = self._buffers.pop(consumer_tag, None)
        if buffer is not None:
            buffer.put_nowait(_END)

    async def consume(
        self,
        queue: str,
        auto_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        consumer_tag: str | None = None,
    ) -> AsyncIterator[Delivery]:
        """Iterate over deliveries until the consumer is cancelled or the channel closes.
        Breaking out of the loop cancels the consumer; unacked deliveries stay on the
        channel until acked or the channel closes, and those buffered but not yet yielded
        are requeued (as aio-pika's QueueIterator.close does)."""
        buffer = _Buffer()
        tag = await self._run(
            self._state.basic_consume(queue, buffer, auto_ack, exclusive, consumer_tag, arguments)
        )
        self._buffers[tag] = buffer
        self._start_dispatcher()
        items = buffer._items
        try:
            while True:
                item = items.popleft() if items else await buffer.get()
                if item is _END:
                    return
                if len(items) <= _REFILL_AT:
                    self._wake.set()
                yield item
        finally:
            if self._state.is_open and tag in self._state.consumers:
                await self.basic_cancel(tag)
            for item in _drain(buffer):
                if item is not _END and not auto_ack and self._state.is_open:
                    await self.basic_nack(item.delivery_tag, requeue=True)

    # --- dispatch -------------------------------------------------------------------------

    def _start_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._waker = functools.partial(self._loop.call_soon_threadsafe, self._wake.set)
            self.connection.engine.add_waker(self._waker)
            self._dispatcher = self._loop.create_task(self._dispatch_loop())
        self._wake.set()

    def _stop_dispatcher(self) -> None:
        if self._waker is not None and self.connection._engine is not None:
            self.connection._engine.remove_waker(self._waker)
            self._waker = None
        if self._dispatcher is not None and self._dispatcher is not asyncio.current_task():
            self._dispatcher.cancel()
        self._dispatcher = None

    async def _dispatch_loop(self) -> None:
        while self._state.is_open and self._state.consumers:
            self._wake.clear()
            full = {t for t, b in self._buffers.items() if b.qsize() >= _BUFFER_LIMIT}
            try:
                deliveries = await self._run_exclusive(self._state.fetch(skip=full))
            except errors.MqstoreError:
                return
            for consumer in self._state.broker_cancelled:
                self._broker_cancelled(consumer)
            self._state.broker_cancelled.clear()
            buffers = self._buffers
            for consumer, method, properties, body in deliveries:
                buffer = consumer.callback
                if type(buffer) is _Buffer and consumer.tag in buffers:
                    # An iterator's delivery (as _deliver, without a coroutine per message).
                    buffer.put_nowait(Delivery(self, method, properties, body))
                else:
                    await self._deliver(consumer, method, properties, body)
            if not deliveries:
                await self._wake.wait()
        if self._waker is not None:
            self.connection.engine.remove_waker(self._waker)
            self._waker = None

    async def _deliver(
        self, consumer: Consumer, method: Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        if isinstance(consumer.callback, _Buffer | asyncio.Queue):
            if consumer.tag not in self._buffers and not consumer.auto_ack:
                # Leased while its iterator ended: nobody will see it, so requeue it.
                await self.basic_nack(method.delivery_tag, requeue=True)
                return
            consumer.callback.put_nowait(Delivery(self, method, properties, body))
        else:
            await _maybe_await(consumer.callback(self, method, properties, body))

    def _broker_cancelled(self, consumer: Consumer) -> None:
        buffer = self._buffers.pop(consumer.tag, None)
        if buffer is not None:
            buffer.put_nowait(_END)


def _drain(buffer: _Buffer) -> list[Any]:
    items = []
    while not buffer.empty():
        items.append(buffer.get_nowait())
    return items


async def _maybe_await(result: Any) -> Any:
    if inspect.isawaitable(result):
        return await result
    return result
