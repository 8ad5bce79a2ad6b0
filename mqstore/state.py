"""Channel state with no I/O: delivery tags, prefetch, consumers, and what each call stores.

Each channel operation is a generator that yields :class:`Call` objects (a store operation to
run in a transaction) and receives their results. The blocking facade drives it with
``Engine.run`` and the asyncio facade with ``await Engine.run_async``; both share every rule
here, so neither re-implements routing, leasing or bookkeeping.
"""

from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import Callable, Collection, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import codec, core, errors, store, txn
from .delay import delay_ms, delayed_type
from .types import (
    BasicProperties,
    BasicQosOk,
    Deliver,
    ExchangeBindOk,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    ExchangeUnbindOk,
    GetOk,
    LeasedMessage,
    Method,
    QueueBindOk,
    QueueDeleteOk,
    QueuePurgeOk,
    QueueUnbindOk,
    ReturnedMessage,
)

FETCH_LIMIT = 100
# Direct reply-to (RabbitMQ's pseudo-queue): a channel consuming from it gets a hidden
# exclusive auto-delete queue named REPLY_TO + "." + a random suffix; a publish on that
# channel with reply_to=REPLY_TO carries that name instead, so replies (default exchange,
# routing key = reply_to) reach the consumer from any process. See docs/rpc.md.
REPLY_TO = "amq.rabbitmq.reply-to"
# store.ack's keyword arguments for acks of fresh leases (the engine copies them per call).
_MISSING_OK: Mapping[str, Any] = {"missing_ok": True}


class Call:
    """A store operation for the engine to run: ``fn(tx, *args, **kwargs)``.

    A plain class with slots: one is made per operation, and a frozen dataclass's
    ``__init__`` (object.__setattr__ per field) cost 2.6 us of a publish's ~45."""

    __slots__ = ("args", "coalesce", "fn", "kwargs", "on_done", "post", "sync")

    def __init__(
        self,
        fn: Any,
        args: tuple = (),
        kwargs: Mapping[str, Any] | None = None,
        sync: bool = False,
        post: bool = False,
        on_done: Any = None,
        coalesce: Any = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = {} if kwargs is None else kwargs
        self.sync = sync
        # Fire and forget: queued for the next group commit; ``on_done(result, error)`` is
        # called (on the committing thread) once it ran. Used for acks, as AMQP's are.
        self.post = post
        self.on_done = on_done
        # Posted calls with the same key that are still queued are merged into one (their
        # first argument, a list, is concatenated): one statement loop for many acks.
        self.coalesce = coalesce


Steps = Generator[Call, Any, Any]


@dataclass(slots=True)
class Unacked:
    entry_id: int
    token: int
    consumer_tag: str | None
    # The queue's consumer timeout: the AMQP server closes the channel (406) past it.
    consumer_timeout_ms: int = 0
    leased_at_ms: int = 0
    lease_ms: int = 0

    @classmethod
    def of(cls, message: LeasedMessage, consumer_tag: str | None) -> Unacked:
        return cls(
            message.entry_id,
            message.token,
            consumer_tag,
            message.consumer_timeout_ms,
            message.leased_at_ms,
            message.lease_ms,
        )

    def fresh(self, now_ms: int) -> bool:
        """Far from any deadline, so the lease cannot have been lost (a live connection
        renews it): its ack may be committed later."""
        bound = min(self.lease_ms, self.consumer_timeout_ms or self.lease_ms)
        return bool(self.lease_ms) and now_ms - self.leased_at_ms < bound // 2


@dataclass(slots=True)
class Consumer:
    tag: str
    queue: str
    auto_ack: bool
    exclusive: bool
    prefetch: int
    callback: Any
    row_id: int = 0
    unacked: int = 0
    # x-priority (None: not given). Only consumers with one report a full prefetch window
    # to other processes (``blocked``), so lower-priority consumers may take over.
    priority: int | None = None
    blocked: bool = False


@dataclass(slots=True)
class ConnectionSettings:
    """Per-connection choices: durability of publishes and the default lease length."""

    durability: str = "full"
    visibility_timeout_ms: int = core.DEFAULT_VISIBILITY_TIMEOUT_MS
    max_message_size: int = core.DEFAULT_MAX_MESSAGE_SIZE

    def __post_init__(self) -> None:
        if self.durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', not {self.durability!r}")
        if self.visibility_timeout_ms <= 0:
            raise ValueError("visibility_timeout_ms must be positive")


class ChannelState:
    """One channel's bookkeeping; its generator methods mirror pika's channel methods."""

    def __init__(self, number: int, session: int, settings: ConnectionSettings) -> None:
        self.number = number
        self.session = session
        self.settings = settings
        self.is_open = True
        self.close_reason: errors.ChannelClosed | None = None
        self.unacked: dict[int, Unacked] = {}
        self.consumers: dict[str, Consumer] = {}
        self.broker_cancelled: list[Consumer] = []
        self.prefetch_count = 0
        self.global_prefetch = 0
        self._tags = itertools.count(1)
        self._consumer_counter = itertools.count(1)
        self._round = 0
        # The engine's lease clock (set by the face); without it no ack is deferred.
        self.now_ms: Any = None
        # An error of a deferred ack, raised by the channel's next operation.
        self.deferred_error: errors.MqstoreError | None = None
        # The hidden queue behind this channel's direct reply-to consumer, if any.
        self.reply_queue: str | None = None
        # The open transaction (mqstore.txn): acks and publishes wait in it for tx_commit.
        self.tx: txn.TxBuffer | None = None

    @property
    def _durable_sync(self) -> bool:
        return self.settings.durability == "full"

    def check_open(self) -> None:
        if not self.is_open:
            reason = f": {self.close_reason}" if self.close_reason else ""
            raise errors.ChannelWrongStateError(f"Channel {self.number} is closed{reason}")
        if self.deferred_error is not None:
            error, self.deferred_error = self.deferred_error, None
            raise error

    # --- exchanges and queues -------------------------------------------------------------

    def exchange_declare(
        self,
        exchange: str,
        exchange_type: Any = "direct",
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Steps:
        self.check_open()
        kind = core.check_exchange_type(delayed_type(exchange_type, arguments))
        name = core.check_name("exchange", exchange, allow_reserved=True)
        yield Call(
            store.exchange_declare,
            (name, kind),
            dict(
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments,
            ),
            sync=self._durable_sync,
        )
        return Method(self.number, ExchangeDeclareOk())

    def exchange_delete(self, exchange: str | None = None, if_unused: bool = False) -> Steps:
        self.check_open()
        name = core.check_name("exchange", exchange or "", allow_reserved=True)
        yield Call(store.exchange_delete, (name,), dict(if_unused=if_unused))
        return Method(self.number, ExchangeDeleteOk())

    def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> Steps:
        """Exchange-to-exchange binding (a RabbitMQ extension to AMQP 0-9-1)."""
        self.check_open()
        dest = core.check_name("exchange", destination, allow_reserved=True)
        src = core.check_name("exchange", source, allow_reserved=True)
        key = core.check_routing_key(routing_key)
        yield Call(store.exchange_bind, (dest, src, key, arguments), sync=self._durable_sync)
        return Method(self.number, ExchangeBindOk())

    def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> Steps:
        self.check_open()
        dest = core.check_name("exchange", destination, allow_reserved=True)
        src = core.check_name("exchange", source, allow_reserved=True)
        key = core.check_routing_key(routing_key)
        yield Call(store.exchange_unbind, (dest, src, key, arguments))
        return Method(self.number, ExchangeUnbindOk())

    def queue_declare(
        self,
        queue: str,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Steps:
        self.check_open()
        name = core.check_name("queue", queue, allow_reserved=passive)
        result = yield Call(
            store.queue_declare,
            (self.session, name),
            dict(
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
            ),
            sync=self._durable_sync,
        )
        return Method(self.number, result)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False) -> Steps:
        self.check_open()
        name = core.check_name("queue", queue, allow_reserved=True)
        count = yield Call(
            store.queue_delete,
            (self.session, name),
            dict(if_unused=if_unused, if_empty=if_empty),
        )
        return Method(self.number, QueueDeleteOk(count))

    def queue_purge(self, queue: str) -> Steps:
        self.check_open()
        name = core.check_name("queue", queue, allow_reserved=True)
        count = yield Call(store.queue_purge, (self.session, name))
        return Method(self.number, QueuePurgeOk(count))

    def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Steps:
        self.check_open()
        qname = core.check_name("queue", queue, allow_reserved=True)
        xname = core.check_name("exchange", exchange, allow_reserved=True)
        key = core.check_routing_key(qname if routing_key is None else routing_key)
        yield Call(
            store.queue_bind, (self.session, qname, xname, key, arguments), sync=self._durable_sync
        )
        return Method(self.number, QueueBindOk())

    def queue_unbind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Steps:
        self.check_open()
        qname = core.check_name("queue", queue, allow_reserved=True)
        xname = core.check_name("exchange", exchange or "", allow_reserved=True)
        key = core.check_routing_key(qname if routing_key is None else routing_key)
        yield Call(store.queue_unbind, (self.session, qname, xname, key, arguments))
        return Method(self.number, QueueUnbindOk())

    # --- publishing -----------------------------------------------------------------------

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: Any,
        properties: BasicProperties | None = None,
        mandatory: bool = False,
        amqp_properties: bytes | None = None,
        *,
        delay: Any = None,
    ) -> Steps:
        """Store one message; returns a ReturnedMessage when mandatory and unroutable.
        ``amqp_properties``: the AMQP server's raw property bytes, stored for delivery.
        ``delay`` (seconds) or an ``x-delay`` header (ms): deliverable only then."""
        prepared = self._prepare_publish(
            exchange, routing_key, body, properties, mandatory, amqp_properties, delay
        )
        if prepared is None:
            return None
        routed = yield prepared[0]
        return self._published(routed, *prepared[1:], properties, mandatory)

    def publish_now(
        self,
        run: Callable[..., Any],
        exchange: str,
        routing_key: str,
        body: Any,
        properties: BasicProperties | None = None,
        mandatory: bool = False,
        *,
        delay: Any = None,
    ) -> ReturnedMessage | None:
        """:meth:`basic_publish` with a blocking ``run`` (Engine.run) and without the
        generator protocol: the same steps, ~2 us less on a sequential publisher's path,
        where a publish returns only after its own commit."""
        if properties is None and delay is None and self.tx is None:
            # The common case, without building a Call: every step here runs on cold
            # caches after the previous publish's fsync.
            self.check_open()
            xname, key, data = self._checked(exchange, routing_key, body)
            routed = run(store.publish, xname, key, data, None, 0, None, sync=self._durable_sync)
            return self._published(routed, xname, key, data, None, mandatory)
        prepared = self._prepare_publish(
            exchange, routing_key, body, properties, mandatory, None, delay
        )
        if prepared is None:
            return None
        call = prepared[0]
        routed = run(call.fn, *call.args, sync=call.sync, **call.kwargs)
        return self._published(routed, *prepared[1:], properties, mandatory)

    def _prepare_publish(
        self,
        exchange: str,
        routing_key: str,
        body: Any,
        properties: BasicProperties | None,
        mandatory: bool,
        amqp_properties: bytes | None,
        delay: Any,
    ) -> tuple[Call, str, str, bytes] | None:
        """Validate a publish: the store call to make, or None when an open transaction
        (mqstore.txn) took it, to be made at tx_commit."""
        self.check_open()
        call, xname, key, data = self._publish_call(
            exchange, routing_key, body, properties, amqp_properties, delay
        )
        if self.tx is None:
            return call, xname, key, data
        self.tx.publish((call.args, call.kwargs), xname, key, properties, data, mandatory)
        return None

    @staticmethod
    def _published(
        routed: Any,
        xname: str,
        key: str,
        data: bytes,
        properties: BasicProperties | None,
        mandatory: bool,
    ) -> ReturnedMessage | None:
        """What a committed publish means for its publisher: a nack (a full queue refused
        it), a return (mandatory and no queue took it), or nothing."""
        if isinstance(routed, store.Refused):
            also = f"; stored in {routed.routed} other queue(s)" if routed.routed else ""
            refused = ReturnedMessage.rejected(xname, key, properties, data)
            raise _publish_refused(refused, routed.queues, also)
        if routed or not mandatory:
            return None
        return ReturnedMessage.no_route(xname, key, properties, data)

    def basic_publish_batch(
        self,
        exchange: str,
        routing_key: str,
        bodies: Iterable[Any],
        properties: BasicProperties | None = None,
        mandatory: bool = False,
    ) -> Steps:
        """Store every body in ``bodies`` with one exchange, routing key and properties, in
        one store transaction (one fsync): all of them, or none when a full queue refuses
        one (x-overflow reject-publish). Returns the mandatory ones no queue took. Inside an
        open channel transaction they join it instead."""
        self.check_open()
        datas = [core.coerce_body(body) for body in bodies]
        if not datas:
            return []
        call, xname, key, _ = self._publish_call(
            exchange, routing_key, datas[0], properties, None, None
        )
        for data in datas:
            self._check_size(data)
        if self.tx is not None:
            for data in datas:
                args = (*call.args[:2], data, *call.args[3:])
                self.tx.publish((args, call.kwargs), xname, key, properties, data, mandatory)
            return []
        _, _, _, encoded, priority, headers = call.args
        try:
            routed = yield Call(
                txn.publish_batch,
                (xname, key, datas, encoded, priority, headers, call.kwargs),
                sync=self._durable_sync,
            )
        except txn.TxRefused as exc:
            refused = ReturnedMessage.rejected(xname, key, properties, datas[exc.index])
            also = f"; none of the batch's {len(datas)} messages was stored"
            raise _publish_refused(refused, exc.refused.queues, also) from None
        if not mandatory:
            return []
        pairs = zip(datas, routed, strict=True)
        return [ReturnedMessage.no_route(xname, key, properties, d) for d, n in pairs if not n]

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.settings.max_message_size:
            raise errors.MessageTooLargeError(
                f"PRECONDITION_FAILED - message size {len(data)} is larger than configured "
                f"max size {self.settings.max_message_size}"
            )

    def _checked(self, exchange: str, routing_key: str, body: Any) -> tuple[str, str, bytes]:
        """A publish's exchange name, routing key and body, validated."""
        data = core.coerce_body(body)
        xname = "" if exchange == "" else core.check_name("exchange", exchange, allow_reserved=True)
        key = core.check_routing_key(routing_key)
        self._check_size(data)
        return xname, key, data

    def _publish_call(
        self,
        exchange: str,
        routing_key: str,
        body: Any,
        properties: BasicProperties | None,
        amqp_properties: bytes | None,
        delay: Any,
    ) -> tuple[Call, str, str, bytes]:
        """Validate one publish: the store call that stores it, with the checked exchange
        name, routing key and body."""
        xname, key, data = self._checked(exchange, routing_key, body)
        if properties is None and amqp_properties is None and delay is None:
            # No properties: nothing to encode, expire, delay or deduplicate.
            call = Call(store.publish, (xname, key, data, None, 0, None), sync=self._durable_sync)
            return call, xname, key, data
        fields = properties.fields() if properties is not None else {}
        if fields.get("reply_to") == REPLY_TO:
            if self.reply_queue is None or not any(
                c.queue == self.reply_queue for c in self.consumers.values()
            ):
                raise core.precondition("fast reply consumer does not exist")
            # The reply address of this channel's consumer; the raw AMQP bytes (if any) are
            # dropped so the delivered properties carry the rewritten reply_to.
            fields["reply_to"] = self.reply_queue
            amqp_properties = None
        core.check_expiration(fields.get("expiration"))
        encoded = codec.encode_properties(fields) if fields else None
        extra: dict[str, Any] = {}
        if amqp_properties is not None:
            extra["amqp_properties"] = amqp_properties
        if "expiration" in fields:
            extra["expiration"] = core.message_expiration(fields["expiration"])
        held = delay_ms(fields.get("headers"), delay)
        if held is not None:
            extra["delay"] = held
        if fields.get("message_id") is not None:
            extra["message_id"] = str(fields["message_id"])  # x-deduplication-window
        call = Call(
            store.publish,
            (xname, key, data, encoded, fields.get("priority") or 0, fields.get("headers")),
            extra,
            sync=self._durable_sync,
        )
        return call, xname, key, data

    # --- consuming ------------------------------------------------------------------------

    def basic_qos(
        self, prefetch_size: int = 0, prefetch_count: int = 0, global_qos: bool = False
    ) -> Steps:
        self.check_open()
        count = core.check_prefetch(prefetch_count, prefetch_size)
        if global_qos:
            self.global_prefetch = count
        else:
            self.prefetch_count = count
        return Method(self.number, BasicQosOk())
        yield  # a generator like the others, though it stores nothing

    def basic_get(self, queue: str, auto_ack: bool = False) -> Steps:
        self.check_open()
        name = core.check_name("queue", queue, allow_reserved=True)
        request = store.LeaseRequest(
            name, 1, auto_ack, self.settings.visibility_timeout_ms, with_count=True
        )
        leased = yield Call(store.get, (self.session, request))
        if not leased:
            return None, None, None
        message = leased[0]
        tag = self._track(message, None, auto_ack)
        method = GetOk(
            tag,
            message.delivery_count > 1,
            message.exchange,
            message.routing_key,
            message.message_count,
            message.delivery_count,
        )
        return method, _properties(message), message.body

    def basic_consume(
        self,
        queue: str,
        callback: Any,
        auto_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> Steps:
        self.check_open()
        name = core.check_name("queue", queue, allow_reserved=True)
        tag = consumer_tag or core.new_consumer_tag(self.number, next(self._consumer_counter))
        if tag in self.consumers:
            raise errors.DuplicateConsumerTag(tag)
        priority = _consumer_priority(arguments)
        if name == REPLY_TO:
            name = yield from self._reply_consumer(auto_ack)
        row_id = yield Call(
            store.add_consumer,
            (self.session, name, tag),
            dict(exclusive=exclusive, priority=priority or 0),
        )
        self.consumers[tag] = Consumer(
            tag, name, auto_ack, exclusive, self.prefetch_count, callback, row_id, 0, priority
        )
        return tag

    def _reply_consumer(self, auto_ack: bool) -> Steps:
        """Direct reply-to: the channel's hidden reply queue, created for its (one) reply
        consumer; RabbitMQ's rules: auto_ack only, one per channel."""
        if not auto_ack:
            raise core.precondition("reply consumer cannot acknowledge")
        if self.reply_queue is not None and any(
            c.queue == self.reply_queue for c in self.consumers.values()
        ):
            raise core.precondition("reply consumer already set")
        name = f"{REPLY_TO}.{secrets.token_urlsafe(18)}"
        yield Call(
            store.queue_declare,
            (self.session, name),
            dict(passive=False, durable=False, exclusive=True, auto_delete=True, arguments=None),
        )
        self.reply_queue = name
        return name

    def basic_cancel(self, consumer_tag: str) -> Steps:
        """Stop a consumer; its unacked deliveries stay on the channel (as in AMQP)."""
        self.check_open()
        consumer = self.consumers.pop(consumer_tag, None)
        if consumer is not None:
            yield Call(store.remove_consumer, (consumer.row_id,))
        return consumer

    def fetch(self, skip: Collection[str] = ()) -> Steps:
        """Lease what every consumer of this channel (but those in ``skip``) has room for,
        in one transaction; returns ``(consumer, Deliver, BasicProperties, body)`` tuples."""
        if not self.is_open or not self.consumers:
            return []
        self.check_open()  # raises a deferred ack's error
        consumers = list(self.consumers.values())
        start = self._round % len(consumers)
        self._round += 1
        consumers = consumers[start:] + consumers[:start]
        budget = self.global_prefetch - len(self.unacked) if self.global_prefetch else None
        plan: list[tuple[Consumer, int]] = []
        for consumer in consumers:
            if consumer.tag in skip:
                continue
            room = FETCH_LIMIT
            if not consumer.auto_ack:
                if consumer.prefetch:
                    # Fill every free slot at once, as RabbitMQ does: waiting for the window
                    # to half-empty starves a consumer that holds deliveries until more come.
                    room = min(room, consumer.prefetch - consumer.unacked)
                if budget is not None:
                    room = min(room, budget)
                    budget -= max(room, 0)
            if room > 0:
                plan.append((consumer, room))
        for consumer in consumers:
            if consumer.blocked and consumer.unacked < consumer.prefetch:
                # Room again: higher priority than others again (fire and forget).
                consumer.blocked = False
                yield Call(store.set_consumer_blocked, (consumer.row_id, False), post=True)
        if not plan:
            return []
        # Consumers of one queue (and ack mode) share one lease, dealt out in turn: RabbitMQ
        # dispatches round-robin, not everything to the first consumer.
        groups: dict[tuple[str, bool], list[tuple[Consumer, int]]] = {}
        for consumer, room in plan:
            groups.setdefault((consumer.queue, consumer.auto_ack), []).append((consumer, room))
        vt = self.settings.visibility_timeout_ms
        requests = [
            store.LeaseRequest(
                queue,
                sum(room for _, room in members),
                auto_ack,
                vt,
                consumers=tuple((c.row_id, c.priority or 0, room) for c, room in members),
            )
            for (queue, auto_ack), members in groups.items()
        ]
        results = yield Call(store.lease, (self.session, requests))
        deliveries = []
        for members, result in zip(groups.values(), results, strict=True):
            if result is None:
                # The queue was deleted: the broker cancels its consumers.
                for consumer, _ in members:
                    self.consumers.pop(consumer.tag, None)
                    self.broker_cancelled.append(consumer)
                continue
            # Single active consumer and consumer priorities: only the allowed ones.
            leased, allowed = result
            members = [(c, room) for c, room in members if c.row_id in allowed]
            if not leased:
                continue
            if len(members) == 1:
                # One consumer (the common case): no turns to deal out.
                self._deliver_all(members[0][0], leased, deliveries)
            else:
                rooms = [room for _, room in members]
                turn = 0
                for message in leased:
                    while rooms[turn] == 0:
                        turn = (turn + 1) % len(members)
                    consumer = members[turn][0]
                    rooms[turn] -= 1
                    turn = (turn + 1) % len(members)
                    self._deliver_all(consumer, (message,), deliveries)
            for consumer, _ in members:
                full = consumer.prefetch and consumer.unacked >= consumer.prefetch
                if consumer.priority is not None and full and not consumer.auto_ack:
                    consumer.blocked = True
                    yield Call(store.set_consumer_blocked, (consumer.row_id, True), post=True)
        return deliveries

    def _deliver_all(
        self, consumer: Consumer, leased: Collection[LeasedMessage], out: list[Any]
    ) -> None:
        """Track ``leased`` as deliveries to ``consumer`` and append them to ``out``; as
        :meth:`_track` and :class:`Deliver` per message, with the lookups hoisted out of the
        loop (it runs for every consumed message)."""
        tags = self._tags
        unacked = self.unacked
        ctag = consumer.tag
        track = not consumer.auto_ack
        for message in leased:
            tag = next(tags)
            if track:
                unacked[tag] = Unacked.of(message, ctag)
            count = message.delivery_count
            method = Deliver(ctag, tag, count > 1, message.exchange, message.routing_key, count)
            out.append((consumer, method, _properties(message), message.body))
        if track:
            consumer.unacked += len(leased)

    def _track(self, message: LeasedMessage, consumer: Consumer | None, auto_ack: bool) -> int:
        tag = next(self._tags)
        if not auto_ack:
            self.unacked[tag] = Unacked.of(message, consumer.tag if consumer else None)
            if consumer is not None:
                consumer.unacked += 1
        return tag

    # --- acknowledgements -----------------------------------------------------------------

    def _take(self, delivery_tag: int, multiple: bool) -> list[tuple[int, Unacked]]:
        """Remove and return the deliveries an ack/nack names; 406 for an unknown tag."""
        if isinstance(delivery_tag, bool) or not isinstance(delivery_tag, int):
            raise TypeError(f"delivery_tag must be int, not {type(delivery_tag).__name__}")
        if multiple:
            # As RabbitMQ: a non-zero tag must itself be outstanding, even with multiple.
            if delivery_tag and delivery_tag not in self.unacked:
                raise core.unknown_delivery_tag(delivery_tag)
            tags = [t for t in self.unacked if delivery_tag == 0 or t <= delivery_tag]
        else:
            if delivery_tag not in self.unacked:
                raise core.unknown_delivery_tag(delivery_tag)
            tags = [delivery_tag]
        taken = [(t, self.unacked.pop(t)) for t in tags]
        for _, item in taken:
            consumer = self.consumers.get(item.consumer_tag or "")
            if consumer is not None:
                consumer.unacked -= 1
        return taken

    def _fresh(self, taken: list[tuple[int, Unacked]]) -> bool:
        """True when every lease is fresh (Unacked.fresh): their ack may be committed later."""
        if self.now_ms is None:
            return False
        now = self.now_ms()
        return all(item.fresh(now) for _, item in taken)

    def _deferred_ack(self, taken: list[tuple[int, Unacked]]) -> Call:
        """The fire-and-forget ack of fresh leases: posted, merged with the channel's other
        queued acks; a failure is kept for the channel's next operation."""
        return Call(
            store.ack,
            ([(u.entry_id, u.token) for _, u in taken],),
            _MISSING_OK,
            post=True,
            on_done=functools.partial(self._deferred_done, taken),
            coalesce=("ack", id(self)),
        )

    def _deferred_done(
        self, taken: list[tuple[int, Unacked]], stale: Any, error: BaseException | None
    ) -> None:
        if isinstance(error, errors.MqstoreError):
            self.deferred_error = error
        elif stale:
            mine = {(u.entry_id, u.token) for _, u in taken}
            if mine.intersection(tuple(pair) for pair in stale):
                self.deferred_error = _lease_lost(taken, stale, ack=True)

    def _settle(self, taken: list[tuple[int, Unacked]], *, ack: bool, requeue: bool) -> Steps:
        if not taken:
            return None
        if self.tx is not None:
            self.tx.settle(taken, ack=ack, requeue=requeue)  # stored by tx_commit
            return None
        if ack and self._fresh(taken):
            # Like an AMQP ack: no round trip. Group commits batch many of them; a failure
            # (practically impossible for a fresh lease) is raised by the next operation.
            yield self._deferred_ack(taken)
            return None
        pairs = [(u.entry_id, u.token) for _, u in taken]
        if ack:
            stale = yield Call(store.ack, (pairs,))
        else:
            stale = yield Call(store.release, (pairs,), dict(requeue=requeue))
        if stale:
            raise _lease_lost(taken, stale, ack=ack)
        return None

    def ack_fresh(self, delivery_tag: int) -> Call | None:
        """``basic_ack(delivery_tag)`` without a generator, for the common case: one tag,
        channel open, no error pending, no transaction, a fresh lease. Returns the call to
        post (exactly what :meth:`basic_ack` would post), or None, having changed nothing,
        when any other rule applies: drive :meth:`basic_ack` then."""
        if (
            type(delivery_tag) is not int  # bool, float, int subclasses: basic_ack's checks
            or not self.is_open
            or self.deferred_error is not None
            or self.tx is not None
            or self.now_ms is None
        ):
            return None
        item = self.unacked.get(delivery_tag)
        if item is None or not item.fresh(self.now_ms()):
            return None  # unknown (406) or not fresh: basic_ack's path
        del self.unacked[delivery_tag]
        consumer = self.consumers.get(item.consumer_tag or "")
        if consumer is not None:
            consumer.unacked -= 1
        return self._deferred_ack([(delivery_tag, item)])

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> Steps:
        self.check_open()
        return (
            yield from self._settle(self._take(delivery_tag, multiple), ack=True, requeue=False)
        )

    def basic_nack(
        self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True
    ) -> Steps:
        self.check_open()
        taken = self._take(delivery_tag, multiple)
        return (yield from self._settle(taken, ack=False, requeue=requeue))

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> Steps:
        self.check_open()
        taken = self._take(delivery_tag, False)
        return (yield from self._settle(taken, ack=False, requeue=requeue))

    def basic_recover(self, requeue: bool = True) -> Steps:
        """Requeue every unacknowledged delivery of this channel."""
        self.check_open()
        taken = self._take(0, True)
        if taken:
            yield Call(
                store.release, ([(u.entry_id, u.token) for _, u in taken],), dict(requeue=True)
            )
        return None

    def requeue_unacked(self) -> Steps:
        taken = self._take(0, True)
        if taken:
            yield Call(
                store.release, ([(u.entry_id, u.token) for _, u in taken],), dict(requeue=True)
            )
        return len(taken)

    # --- transactions (mqstore.txn) --------------------------------------------------------

    def tx_select(self, *, nested_error: bool = True) -> None:
        """Open a transaction: acks, nacks, rejects and publishes wait for tx_commit."""
        self.check_open()
        if self.tx is not None:
            if nested_error:
                raise errors.ChannelWrongStateError(
                    f"channel {self.number} already has an open transaction"
                )
            return
        self.tx = txn.TxBuffer()

    def tx_commit(self, *, keep_open: bool) -> Steps:
        """Store everything the transaction collected in one store transaction; returns the
        mandatory publishes no queue took. On failure nothing is stored and the settled
        deliveries are unacked on the channel again."""
        self.check_open()
        pending = self.tx
        if pending is None:
            raise core.precondition("channel is not transactional")
        self.tx = txn.TxBuffer() if keep_open else None
        if not pending:
            return []
        settles, publishes = pending.store_args()
        try:
            results = yield Call(
                txn.commit,
                (settles, publishes),
                sync=self._durable_sync and bool(publishes),
            )
        except txn.TxLeaseLost as exc:
            taken = pending.taken()
            pending.restore(self)
            raise _lease_lost(taken, exc.stale, ack=True) from None
        except txn.TxRefused as exc:
            _, xname, key, properties, data, _ = pending.publishes[exc.index]
            pending.restore(self)
            refused = ReturnedMessage.rejected(xname, key, properties, data)
            also = "; the transaction was rolled back"
            raise _publish_refused(refused, exc.refused.queues, also) from None
        except errors.MqstoreError:
            pending.restore(self)
            raise
        return pending.returned(results)

    def tx_rollback(self, *, keep_open: bool) -> None:
        """Discard the transaction: nothing is stored; settled deliveries are unacked on the
        channel again (AMQP Tx.Rollback)."""
        pending = self.tx
        self.tx = txn.TxBuffer() if keep_open and pending is not None else None
        if pending is not None:
            pending.restore(self)

    # --- closing --------------------------------------------------------------------------

    def close(self, reason: errors.ChannelClosed | None = None) -> Steps:
        """Close the channel: requeue its unacked deliveries and drop its consumers."""
        if not self.is_open:
            return None
        self.is_open = False
        self.close_reason = reason
        self.tx_rollback(keep_open=False)
        taken = self._take(0, True)
        consumers = list(self.consumers.values())
        self.consumers.clear()
        if taken or consumers:
            yield Call(
                _close_channel,
                ([(u.entry_id, u.token) for _, u in taken], [c.row_id for c in consumers]),
            )
        return None


def _consumer_priority(arguments: Mapping[str, Any] | None) -> int | None:
    """The ``x-priority`` consumer argument (an integer, as RabbitMQ requires)."""
    value = (arguments or {}).get("x-priority")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise core.precondition(f"invalid arg 'x-priority': {value!r} is not an integer")
    return value


def _close_channel(tx: store.Txn, leases: list[tuple[int, int]], consumer_ids: list[int]) -> None:
    store.release(tx, leases, requeue=True)
    for consumer_id in consumer_ids:
        store.remove_consumer(tx, consumer_id)


def _properties(message: LeasedMessage) -> BasicProperties:
    fields = message.properties
    if not fields and message.delivery_count == 1:
        properties = BasicProperties()  # no properties, first delivery: nothing to copy
        properties.amqp_encoded = message.amqp_properties
        return properties
    if message.delivery_count > 1:
        # As RabbitMQ quorum queues: the number of earlier deliveries, absent on the first.
        headers = dict(fields.get("headers") or {})
        headers["x-delivery-count"] = message.delivery_count - 1
        fields = {**fields, "headers": headers}
    properties = BasicProperties.from_fields(fields)
    properties.amqp_encoded = message.amqp_properties
    return properties


def _publish_refused(
    refused: ReturnedMessage, queues: Collection[str], also: str
) -> errors.NackError:
    """NackError for a publish a full queue refused (x-overflow reject-publish)."""
    names = ", ".join(core.queue_desc(q) for q in queues)
    return errors.NackError(
        [refused], f"publish refused: {names} is full (x-overflow reject-publish){also}"
    )


def _lease_lost(
    taken: list[tuple[int, Unacked]], stale: Any, *, ack: bool
) -> errors.LeaseLostError:
    stale_pairs = {tuple(pair) for pair in stale}
    lost = sorted(t for t, u in taken if (u.entry_id, u.token) in stale_pairs)
    return errors.LeaseLostError(
        f"PRECONDITION_FAILED - delivery tag {lost[0]} lease lost: the delivery outlived its "
        f"lease and may have been redelivered; {'ack' if ack else 'nack'} refused"
    )


def drive(steps: Steps, run: Any, post: Any = None) -> Any:
    """Run a channel operation to completion with a blocking ``run(fn, *args, sync, **kw)``
    (and ``post(call)`` for fire-and-forget calls)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        if call.post and post is not None:
            post(call)
            continue
        try:
            value = run(call.fn, *call.args, sync=call.sync, **call.kwargs)
        except errors.MqstoreError as exc:
            error = exc


async def drive_async(
    steps: Steps, run_async: Any, post: Any = None, *, pending: Any = None
) -> Any:
    """As :func:`drive`, awaiting each store operation. ``pending``: the future of the call
    the steps already yielded (queued on the engine early, see :func:`submit`)."""
    value: Any = None
    error: BaseException | None = None
    if pending is not None:
        try:
            value = await pending
        except errors.MqstoreError as exc:
            error = exc
    while True:
        try:
            call = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        if call.post and post is not None:
            post(call)
            continue
        try:
            value = await run_async(call.fn, *call.args, sync=call.sync, **call.kwargs)
        except errors.MqstoreError as exc:
            error = exc


def submit(steps: Steps, run_async: Any) -> tuple[Any, Any]:
    """Advance ``steps`` to their first store call and queue it now (``run_async``), so it
    reaches the engine before the caller's next await: ``(future, None)``, to be finished
    with ``drive_async(steps, ..., pending=future)``; or ``(None, result)`` when the steps
    finished without a call."""
    try:
        call = steps.send(None)
    except StopIteration as stop:
        return None, stop.value
    return run_async(call.fn, *call.args, sync=call.sync, **call.kwargs), None
