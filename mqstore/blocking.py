"""A pika-shaped blocking API over one SQLite file.

Code written for ``pika.BlockingConnection`` changes its import and connection lines only::

    connection = mqstore.BlockingConnection(mqstore.ConnectionParameters(path="broker.db"))
    channel = connection.channel()

Every call runs through the shared engine of its file (group commit across threads and
connections); the channel rules live in :mod:`mqstore.state`.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import core, engine, errors, wal
from .state import ChannelState, ConnectionSettings, Consumer, Steps, drive
from .types import BasicProperties, Clock, Method, ReturnedMessage

DEFAULT_PATH = "mqstore.db"


@dataclass
class ConnectionParameters:
    """Where the broker lives and how it keeps messages.

    Args:
        path: the SQLite file; created when missing.
        durability: "full" (default): a publish returns only after an fsync, so it survives
            power loss. "normal": survives any process crash, may lose the last publishes
            on power loss; several times faster for lone publishers.
        visibility_timeout_ms: lease length for queues without ``x-visibility-timeout``. A live
            connection renews its leases, so this bounds how long a dead or frozen consumer
            holds messages.
        max_message_size: bodies larger than this are refused with 406.
        client_name: recorded with the connection's registration, for operators.
        disk_free_limit: below this many free bytes on the database's file system,
            publishes raise StoreFullError (acks still work); 0 disables the check.
            Set by the first connection to the file in a process.
        clock: where time is read (tests inject a fake one).
    """

    path: str = DEFAULT_PATH
    durability: str = "full"
    visibility_timeout_ms: int = core.DEFAULT_VISIBILITY_TIMEOUT_MS
    max_message_size: int = core.DEFAULT_MAX_MESSAGE_SIZE
    client_name: str | None = None
    clock: Clock | None = None
    disk_free_limit: int = wal.DEFAULT_DISK_FREE_LIMIT

    def settings(self) -> ConnectionSettings:
        return ConnectionSettings(
            self.durability, self.visibility_timeout_ms, self.max_message_size
        )


URLParameters = ConnectionParameters


class BlockingConnection:
    """A connection to the broker in ``parameters.path`` (pika's BlockingConnection)."""

    def __init__(self, parameters: ConnectionParameters | None = None) -> None:
        self.params = parameters or ConnectionParameters()
        self._settings = self.params.settings()
        self._engine = engine.acquire(
            self.params.path, self.params.clock, self.params.disk_free_limit
        )
        try:
            self._session = self._engine.open_session(
                self.params.client_name, self._settings.visibility_timeout_ms
            )
        except BaseException:
            engine.release(self._engine)
            raise
        self._channels: dict[int, BlockingChannel] = {}
        self._numbers = itertools.count(1)
        self._wake = engine.Wake()
        self._callbacks: collections.deque[Callable[[], Any]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], Any]]] = []
        self._timer_ids = itertools.count()
        self._watching = False
        self._closed = False

    # --- pika surface ---------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return not self._closed

    @property
    def is_closed(self) -> bool:
        return self._closed

    def channel(self, channel_number: int | None = None) -> BlockingChannel:
        self._check_open()
        number = channel_number or next(self._numbers)
        while number in self._channels:
            number = next(self._numbers)
        state = ChannelState(number, self._session, self._settings)
        state.now_ms = self._engine.clock.now_ms
        channel = BlockingChannel(self, state)
        self._channels[number] = channel
        return channel

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Close every channel (requeueing unacked deliveries) and unregister."""
        if self._closed:
            return
        for channel in list(self._channels.values()):
            channel.close()
        self._closed = True
        self._unwatch()
        try:
            self._engine.close_session(self._session)
        finally:
            engine.release(self._engine)

    def __enter__(self) -> BlockingConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def process_data_events(self, time_limit: float | None = 0) -> None:
        """Deliver what is waiting to consumer callbacks, run due callbacks and timers.

        ``time_limit=0`` makes one pass; a number waits up to that many seconds for
        something to do; None waits until something was done."""
        self._check_open()
        deadline = None if time_limit is None else time.monotonic() + time_limit
        while True:
            self._wake.clear()
            if self._run_once():
                return
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return
            if self._timers:
                until_timer = self._timers[0][0] - time.monotonic()
                timeout = until_timer if timeout is None else min(timeout, until_timer)
            self._watch()
            self._wake.wait(timeout if timeout is None or timeout > 0 else 0)

    def sleep(self, duration: float) -> None:
        """Sleep while still dispatching deliveries and callbacks (pika's sleep)."""
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            self.process_data_events(time_limit=left)

    def add_callback_threadsafe(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` on the connection's thread at its next event pass."""
        self._callbacks.append(callback)
        self._wake.set()

    def call_later(self, delay: float, callback: Callable[[], Any]) -> int:
        timer_id = next(self._timer_ids)
        heapq.heappush(self._timers, (time.monotonic() + delay, timer_id, callback))
        self._wake.set()
        return timer_id

    def remove_timeout(self, timeout_id: int) -> None:
        self._timers = [t for t in self._timers if t[1] != timeout_id]
        heapq.heapify(self._timers)

    # --- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ConnectionWrongStateError("Connection is closed")

    def _run(self, steps: Steps) -> Any:
        return drive(steps, self._engine.run, self._engine.post)

    def _run_once(self) -> int:
        done = 0
        while self._callbacks:
            self._callbacks.popleft()()
            done += 1
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            heapq.heappop(self._timers)[2]()
            done += 1
        for channel in list(self._channels.values()):
            done += channel._dispatch()
        return done

    def _watch(self) -> None:
        if not self._watching:
            self._engine.add_waker(self._wake.set)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._engine.remove_waker(self._wake.set)
            self._watching = False

    def _forget(self, channel: BlockingChannel) -> None:
        self._channels.pop(channel.channel_number, None)


class BlockingChannel:
    """A channel (pika's BlockingChannel). Errors are raised by the failing call itself as
    ``ChannelClosedByBroker`` subclasses carrying ``reply_code``; the channel is then closed."""

    def __init__(self, connection: BlockingConnection, state: ChannelState) -> None:
        self.connection = connection
        self._state = state
        self._return_callbacks: list[Callable[..., Any]] = []
        self._cancel_callbacks: list[Callable[..., Any]] = []
        self._buffer: collections.deque[tuple[Any, Any, Any]] = collections.deque()
        self._pending: collections.deque[tuple[Consumer, Any, Any, Any]] = collections.deque()
        self._generator: tuple[str, str, bool] | None = None
        self._consuming = False

    def _run(self, steps: Steps) -> Any:
        try:
            return self.connection._run(steps)
        except errors.ChannelClosedByBroker as exc:
            self._close_after(exc)
            raise

    def _close_after(self, exc: errors.ChannelClosed | None) -> None:
        self._buffer.clear()
        self._pending.clear()
        try:
            self.connection._run(self._state.close(exc))
        finally:
            self.connection._forget(self)

    # --- pika surface ---------------------------------------------------------------------

    @property
    def channel_number(self) -> int:
        return self._state.number

    @property
    def is_open(self) -> bool:
        return self._state.is_open

    @property
    def is_closed(self) -> bool:
        return not self._state.is_open

    @property
    def consumer_tags(self) -> list[str]:
        return list(self._state.consumers)

    def close(self, reply_code: int = 0, reply_text: str = "Normal shutdown") -> None:
        """Close the channel; its unacked deliveries are requeued at once."""
        if self._state.is_open:
            self._close_after(errors.ChannelClosedByClient(reply_code, reply_text))

    def __enter__(self) -> BlockingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def confirm_delivery(self) -> None:
        """Accepted for pika compatibility: every publish is already confirmed by its commit."""
        self._state.check_open()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[BlockingChannel]:
        """Acks, nacks, rejects and publishes made inside the block are committed together,
        in ONE store transaction (one fsync), when it exits; if it raises, none of them is
        stored and the deliveries it settled are unacked on the channel again (as after
        AMQP Tx.Rollback). Also the batch publish API: 100 publishes, one commit.

        Inside the block ``basic_publish`` and ``basic_ack`` return at once without storing
        anything. A mandatory publish no queue took goes to the return callbacks after the
        commit (nothing is raised: the rest of the transaction is committed). A publish a
        full ``reject-publish`` queue refuses, or an ack whose lease was lost, fails the
        whole commit (NackError, LeaseLostError). See docs/transactions.md.
        """
        self._state.tx_select()
        try:
            yield self
        except BaseException:
            self._state.tx_rollback(keep_open=False)
            raise
        returned = self._run(self._state.tx_commit(keep_open=False))
        for message in returned:
            for callback in self._return_callbacks:
                callback(self, message.method, message.properties, message.body)

    def exchange_declare(
        self,
        exchange: str,
        exchange_type: Any = "direct",
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return self._run(
            self._state.exchange_declare(
                exchange, exchange_type, passive, durable, auto_delete, internal, arguments
            )
        )

    def exchange_delete(self, exchange: str | None = None, if_unused: bool = False) -> Method:
        return self._run(self._state.exchange_delete(exchange, if_unused))

    def queue_declare(
        self,
        queue: str,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return self._run(
            self._state.queue_declare(queue, passive, durable, exclusive, auto_delete, arguments)
        )

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False) -> Method:
        return self._run(self._state.queue_delete(queue, if_unused, if_empty))

    def queue_purge(self, queue: str) -> Method:
        return self._run(self._state.queue_purge(queue))

    def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return self._run(self._state.queue_bind(queue, exchange, routing_key, arguments))

    def queue_unbind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return self._run(self._state.queue_unbind(queue, exchange, routing_key, arguments))

    def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        """Route what ``source`` routes with ``routing_key`` on through ``destination``."""
        return self._run(self._state.exchange_bind(destination, source, routing_key, arguments))

    def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> Method:
        return self._run(self._state.exchange_unbind(destination, source, routing_key, arguments))

    def basic_qos(
        self, prefetch_size: int = 0, prefetch_count: int = 0, global_qos: bool = False
    ) -> None:
        self._run(self._state.basic_qos(prefetch_size, prefetch_count, global_qos))

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes | str,
        properties: BasicProperties | None = None,
        mandatory: bool = False,
        *,
        delay: float | timedelta | None = None,
    ) -> None:
        """Publish one message; returns once it is committed (durable).

        Raises:
            UnroutableError: ``mandatory`` and no queue took it (return callbacks run first).
            NotFoundError: 404, the exchange does not exist.
            AccessRefusedError: 403, the exchange is internal.
            MessageTooLargeError: 406, the body exceeds ``max_message_size``.

        ``delay`` (keyword-only, seconds or a timedelta): the message is stored now but
        delivered only once the delay has passed (an ``x-delay`` header, in ms, does the
        same; docs/queue-features.md).
        """
        try:
            returned = self._state.publish_now(
                self.connection._engine.run,
                exchange,
                routing_key,
                body,
                properties,
                mandatory,
                delay=delay,
            )
        except errors.ChannelClosedByBroker as exc:
            self._close_after(exc)
            raise
        if returned is not None:
            self._returned(returned)

    def basic_publish_batch(
        self,
        exchange: str,
        routing_key: str,
        bodies: Iterable[bytes | str],
        properties: BasicProperties | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish every body in ``bodies`` with one exchange, routing key and properties,
        in one store transaction and one fsync; returns once all are committed. All or
        nothing: a refusal stores none of them. Inside ``channel.transaction()`` they join
        the transaction. The way to enqueue many messages fast (one fsync per batch).

        Raises:
            UnroutableError: ``mandatory`` and no queue took them (callbacks run first); the
                routed ones of the batch are stored.
            NackError: a full queue (x-overflow reject-publish) refused one; none stored.
            NotFoundError, AccessRefusedError, MessageTooLargeError: as basic_publish.
        """
        returned = self._run(
            self._state.basic_publish_batch(exchange, routing_key, bodies, properties, mandatory)
        )
        if returned:
            self._returned(*returned)

    def _returned(self, *returned: ReturnedMessage) -> None:
        for message in returned:
            for callback in self._return_callbacks:
                callback(self, message.method, message.properties, message.body)
        raise errors.UnroutableError(list(returned))

    def add_on_return_callback(self, callback: Callable[..., Any]) -> None:
        """``callback(channel, method, properties, body)`` for returned mandatory messages."""
        self._return_callbacks.append(callback)

    def add_on_cancel_callback(self, callback: Callable[..., Any]) -> None:
        """``callback(method_frame)`` when the broker cancels a consumer (queue deleted)."""
        self._cancel_callbacks.append(callback)

    def basic_get(
        self, queue: str, auto_ack: bool = False
    ) -> tuple[Any, BasicProperties | None, bytes | None]:
        """``(method, properties, body)``, or ``(None, None, None)`` when the queue is empty."""
        return self._run(self._state.basic_get(queue, auto_ack))

    def basic_consume(
        self,
        queue: str,
        on_message_callback: Callable[..., Any],
        auto_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> str:
        """Register ``on_message_callback(channel, method, properties, body)``; deliveries
        are dispatched by ``start_consuming`` / ``process_data_events``."""
        if not callable(on_message_callback):
            raise TypeError("on_message_callback must be callable")
        return self._run(
            self._state.basic_consume(
                queue, on_message_callback, auto_ack, exclusive, consumer_tag, arguments
            )
        )

    def basic_cancel(self, consumer_tag: str) -> list[Any]:
        self._run(self._state.basic_cancel(consumer_tag))
        return []

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        if not multiple:
            # The common case (one fresh delivery) posts its ack with no generator to drive.
            call = self._state.ack_fresh(delivery_tag)
            if call is not None:
                self.connection._engine.post(call)
                return
        self._run(self._state.basic_ack(delivery_tag, multiple))

    def basic_nack(
        self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True
    ) -> None:
        self._run(self._state.basic_nack(delivery_tag, multiple, requeue))

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self._run(self._state.basic_reject(delivery_tag, requeue))

    def basic_recover(self, requeue: bool = True) -> None:
        self._run(self._state.basic_recover(requeue))

    def start_consuming(self) -> None:
        """Dispatch deliveries until every consumer of this channel is cancelled."""
        self._consuming = True
        try:
            while self._state.is_open and self._state.consumers and self._consuming:
                self.connection.process_data_events(time_limit=None)
        finally:
            self._consuming = False

    def stop_consuming(self, consumer_tag: str | None = None) -> None:
        """Cancel this channel's consumers (or one), which ends ``start_consuming``."""
        tags = [consumer_tag] if consumer_tag else list(self._state.consumers)
        for tag in tags:
            if self._state.is_open:
                self.basic_cancel(tag)
        self._consuming = False

    def get_waiting_message_count(self) -> int:
        return len(self._buffer)

    def consume(
        self,
        queue: str,
        auto_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        inactivity_timeout: float | None = None,
    ) -> Iterator[tuple[Any, Any, Any]]:
        """Yield ``(method, properties, body)``; ``(None, None, None)`` after
        ``inactivity_timeout`` seconds without a message. End it with :meth:`cancel`."""
        params = (queue, auto_ack, exclusive)
        if self._generator is None:
            tag = self.basic_consume(
                queue, self._buffer_delivery, auto_ack, exclusive, arguments=arguments
            )
            self._generator = (tag, queue, auto_ack)
        elif self._generator[1:] != params[:2]:
            raise ValueError("consume() parameters differ from the active consume() generator")
        while True:
            if self._buffer:
                yield self._buffer.popleft()
                continue
            if self._generator is None or not self._state.is_open:
                return
            waited = time.monotonic()
            self.connection.process_data_events(time_limit=inactivity_timeout)
            if self._buffer or self._generator is None:
                continue
            if inactivity_timeout is not None and time.monotonic() - waited >= inactivity_timeout:
                yield (None, None, None)

    def _buffer_delivery(self, channel: Any, method: Any, properties: Any, body: Any) -> None:
        self._buffer.append((method, properties, body))

    def cancel(self) -> int:
        """End the ``consume()`` generator; buffered, unyielded messages are requeued."""
        if self._generator is None:
            return 0
        tag, _, auto_ack = self._generator
        self._generator = None
        count = len(self._buffer)
        if self._state.is_open:
            self.basic_cancel(tag)
            if not auto_ack:
                for method, _, _ in self._buffer:
                    self.basic_nack(method.delivery_tag, requeue=True)
        self._buffer.clear()
        return count

    # --- dispatch -------------------------------------------------------------------------

    def _dispatch(self) -> int:
        if not self._state.is_open:
            return 0
        cancelled = 0
        if not self._pending:
            if not self._state.consumers:
                return 0
            self._pending.extend(self._run(self._state.fetch()))
            # A broker cancel is an event too: process_data_events(None) must return for it.
            cancelled = len(self._state.broker_cancelled)
            for consumer in self._state.broker_cancelled:
                self._broker_cancelled(consumer)
            self._state.broker_cancelled.clear()
        # Deliveries wait in _pending until dispatched: when a callback raises, the rest of
        # the batch goes out at the next event pass (as in pika) instead of staying leased.
        dispatched = 0
        while self._pending:
            consumer, method, properties, body = self._pending.popleft()
            if not consumer.auto_ack and self._state.consumers.get(consumer.tag) is not consumer:
                # An earlier callback cancelled the consumer: as pika, its undispatched
                # deliveries are requeued, not dispatched.
                if self._state.is_open:
                    self.basic_nack(method.delivery_tag, requeue=True)
                continue
            dispatched += 1
            consumer.callback(self, method, properties, body)
        return dispatched + cancelled

    def _broker_cancelled(self, consumer: Consumer) -> None:
        if self._generator and self._generator[0] == consumer.tag:
            self._generator = None
        frame = Method(self.channel_number, _CancelMethod(consumer.tag))
        for callback in self._cancel_callbacks:
            callback(frame)


@dataclass(frozen=True)
class _CancelMethod:
    consumer_tag: str
    NAME = "Basic.Cancel"
