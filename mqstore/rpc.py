"""Request/reply over direct reply-to, in a few lines (docs/rpc.md).

Client (blocking, then asyncio)::

    reply = mqstore.rpc.call(channel, "", "rpc_queue", b"30", timeout=5)
    reply = await mqstore.rpc.call_async(channel, "", "rpc_queue", b"30", timeout=5)

Server: consume the request queue and answer with :func:`reply` (or publish to the default
exchange with ``routing_key=properties.reply_to`` and the request's ``correlation_id``)::

    def on_request(ch, method, properties, body):
        mqstore.rpc.reply(ch, properties, compute(body))
        ch.basic_ack(method.delivery_tag)

The client consumes RabbitMQ's ``amq.rabbitmq.reply-to`` pseudo-queue (auto-ack) on the
channel it is given, once, and matches replies to calls by correlation id; replies to calls
that timed out are dropped. It works with any server that answers RabbitMQ's RPC pattern,
embedded or over AMQP (pika servers against ``mqstore serve``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from typing import Any

from .state import REPLY_TO
from .types import BasicProperties

__all__ = ["REPLY_TO", "call", "call_async", "reply"]


class _Replies:
    """One channel's reply consumer and the calls waiting on it."""

    def __init__(self) -> None:
        self.tag: str | None = None
        self.results: dict[str, tuple[BasicProperties, bytes]] = {}
        self.waiting: set[str] = set()
        self.futures: dict[str, asyncio.Future[tuple[BasicProperties, bytes]]] = {}
        self.lock: asyncio.Lock | None = None  # asyncio: concurrent first calls set up once

    def on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        cid = properties.correlation_id
        future = self.futures.pop(cid, None)
        if future is not None:
            if not future.done():
                future.set_result((properties, body))
        elif cid in self.waiting:
            self.results[cid] = (properties, body)
        # Anything else is a reply to a call that gave up: dropped.


_replies: weakref.WeakKeyDictionary[Any, _Replies] = weakref.WeakKeyDictionary()


def _request_properties(properties: BasicProperties | None, cid: str) -> BasicProperties:
    fields = properties.fields() if properties is not None else {}
    fields["reply_to"] = REPLY_TO
    fields["correlation_id"] = cid
    return BasicProperties.from_fields(fields)


def _timeout(routing_key: str, timeout: float, cid: str) -> TimeoutError:
    return TimeoutError(
        f"no reply to the RPC call to {routing_key!r} within {timeout:g} s "
        f"(correlation id {cid}); is a server consuming it?"
    )


def call(
    channel: Any,
    exchange: str,
    routing_key: str,
    body: bytes | str,
    *,
    timeout: float = 30.0,
    properties: BasicProperties | None = None,
    full: bool = False,
) -> Any:
    """Publish ``body`` as a request and wait for its reply; return the reply body (with
    ``full=True``: ``(properties, body)``).

    The request is published ``mandatory``: when no queue takes it,
    :class:`mqstore.UnroutableError` is raised at once instead of waiting for the timeout.
    Deliveries of the channel's other consumers are dispatched while waiting.

    Raises:
        TimeoutError: no reply within ``timeout`` seconds (a later reply is dropped).
    """
    state = _replies.get(channel)
    if state is None:
        state = _replies[channel] = _Replies()
    if state.tag is None or state.tag not in channel.consumer_tags:
        state.tag = channel.basic_consume(REPLY_TO, state.on_reply, auto_ack=True)
    cid = uuid.uuid4().hex
    state.waiting.add(cid)
    try:
        channel.basic_publish(
            exchange, routing_key, body, _request_properties(properties, cid), mandatory=True
        )
        deadline = time.monotonic() + timeout
        while cid not in state.results:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout(routing_key, timeout, cid)
            channel.connection.process_data_events(time_limit=left)
        props, reply_body = state.results.pop(cid)
    finally:
        state.waiting.discard(cid)
        state.results.pop(cid, None)
    return (props, reply_body) if full else reply_body


async def call_async(
    channel: Any,
    exchange: str,
    routing_key: str,
    body: bytes | str,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - the same signature as call()
    properties: BasicProperties | None = None,
    full: bool = False,
) -> Any:
    """As :func:`call`, on an :class:`mqstore.aio.AsyncChannel`; concurrent calls on one
    channel share its reply consumer."""
    state = _replies.get(channel)
    if state is None:
        state = _replies[channel] = _Replies()
    if state.lock is None:
        state.lock = asyncio.Lock()
    async with state.lock:
        if state.tag is None or state.tag not in channel._state.consumers:
            state.tag = await channel.basic_consume(REPLY_TO, state.on_reply, auto_ack=True)
    cid = uuid.uuid4().hex
    future: asyncio.Future[tuple[BasicProperties, bytes]] = (
        asyncio.get_running_loop().create_future()
    )
    state.futures[cid] = future
    try:
        await channel.basic_publish(
            exchange, routing_key, body, _request_properties(properties, cid), mandatory=True
        )
        try:
            props, reply_body = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise _timeout(routing_key, timeout, cid) from None
    finally:
        state.futures.pop(cid, None)
    return (props, reply_body) if full else reply_body


def reply(channel: Any, request: BasicProperties, body: bytes | str, **fields: Any) -> Any:
    """Answer a request: publish ``body`` to the default exchange with the request's
    ``reply_to`` as routing key and its ``correlation_id`` (blocking or asyncio channel;
    await the result with the latter). ``fields``: further reply properties."""
    props = BasicProperties(correlation_id=request.correlation_id, **fields)
    return channel.basic_publish("", request.reply_to or "", body, props)
