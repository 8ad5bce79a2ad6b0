"""Channel transactions: acks, nacks and publishes committed together, or not at all.

``with channel.transaction(): ...`` (blocking), ``async with channel.transaction(): ...``
(asyncio) and AMQP's Tx.Select / Tx.Commit / Tx.Rollback all collect the channel's
settlements and publishes in a :class:`TxBuffer` (no I/O until commit) and commit them with
one store operation, :func:`commit`: one SQLite transaction, one fsync. A consume-process-
produce step is then exactly-once inside the database: the input's ack and the outputs'
publishes are in the file together or not at all.

Because a transaction's publishes reach the store together, they are also the batch publish
API: :func:`publish_many` routes each distinct (exchange, routing key) once and inserts the
common case (no headers, no TTL, no length limit, no delay, no message id) with two
``executemany`` statements; every other publish goes through :func:`mqstore.store.publish`
itself, in order, so there is one routing and storing path.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import errors, sql, store
from .types import BasicProperties, ReturnedMessage

if TYPE_CHECKING:
    from .state import ChannelState, Unacked

# A publish as ChannelState.basic_publish would pass it to store.publish: (args, kwargs).
PublishCall = tuple[tuple[Any, ...], dict[str, Any]]

SELECT_LAST_MESSAGE_ID = "SELECT coalesce(max(id), 0) FROM mq_messages"
INSERT_MESSAGE_WITH_ID = (
    "INSERT INTO mq_messages (id, exchange, routing_key, properties, body, published_at_ms, "
    "amqp_properties) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# The keyword arguments of store.publish a batched (executemany) publish may carry.
_BATCHABLE_EXTRA = frozenset({"amqp_properties"})


class TxLeaseLost(errors.MqstoreError):
    """A settlement in the transaction named a lease that was lost: nothing committed."""

    def __init__(self, stale: list[tuple[int, int]]) -> None:
        super().__init__(f"{len(stale)} lease(s) lost")
        self.stale = stale


class TxRefused(errors.MqstoreError):
    """A publish in the transaction was refused by a full queue: nothing committed."""

    def __init__(self, index: int, refused: store.Refused) -> None:
        super().__init__(f"publish {index} refused")
        self.index = index
        self.refused = refused


class TxBuffer:
    """What a channel did inside its open transaction, not yet stored."""

    __slots__ = ("publishes", "settles")

    def __init__(self) -> None:
        # (deliveries taken from the channel's unacked map, ack?, requeue?)
        self.settles: list[tuple[list[tuple[int, Unacked]], bool, bool]] = []
        # (store.publish call, exchange, routing key, properties, body, mandatory)
        self.publishes: list[tuple[PublishCall, str, str, BasicProperties | None, bytes, bool]] = []

    def __bool__(self) -> bool:
        return bool(self.settles or self.publishes)

    def settle(self, taken: list[tuple[int, Unacked]], *, ack: bool, requeue: bool) -> None:
        self.settles.append((taken, ack, requeue))

    def publish(
        self,
        call: PublishCall,
        exchange: str,
        routing_key: str,
        properties: BasicProperties | None,
        body: bytes,
        mandatory: bool,
    ) -> None:
        self.publishes.append((call, exchange, routing_key, properties, body, mandatory))

    def restore(self, state: ChannelState) -> None:
        """Rollback: the settled deliveries are unacked on the channel again (AMQP
        Tx.Rollback), so they can be acked, nacked or requeued anew."""
        for taken, _, _ in self.settles:
            for tag, item in taken:
                state.unacked[tag] = item
                consumer = state.consumers.get(item.consumer_tag or "")
                if consumer is not None:
                    consumer.unacked += 1
        self.settles = []
        self.publishes = []

    def taken(self) -> list[tuple[int, Unacked]]:
        return [pair for taken, _, _ in self.settles for pair in taken]

    def store_args(
        self,
    ) -> tuple[list[tuple[list[tuple[int, int]], bool, bool]], list[PublishCall]]:
        settles = [
            ([(u.entry_id, u.token) for _, u in taken], ack, requeue)
            for taken, ack, requeue in self.settles
        ]
        return settles, [p[0] for p in self.publishes]

    def returned(self, results: Sequence[Any]) -> list[ReturnedMessage]:
        """The mandatory publishes no queue took, for the channel's return callbacks."""
        out = []
        for (_, exchange, key, properties, body, mandatory), routed in zip(
            self.publishes, results, strict=True
        ):
            if mandatory and not routed:
                out.append(ReturnedMessage.no_route(exchange, key, properties, body))
        return out


def commit(
    tx: store.Txn,
    settles: Sequence[tuple[Sequence[tuple[int, int]], bool, bool]],
    publishes: Sequence[PublishCall],
) -> list[Any]:
    """The store side of a transaction commit, run as ONE engine operation: settlements
    first (an ack frees room in a length-limited queue before the outputs arrive), then the
    publishes in order. Raises (so the engine undoes all of it) on a lost lease or a
    refused publish; returns each publish's store result."""
    stale: list[tuple[int, int]] = []
    for pairs, ack, requeue in settles:
        if ack:
            stale.extend(store.ack(tx, pairs))
        else:
            stale.extend(store.release(tx, pairs, requeue=requeue))
    if stale:
        raise TxLeaseLost(stale)
    results = publish_many(tx, publishes)
    for index, result in enumerate(results):
        if isinstance(result, store.Refused):
            raise TxRefused(index, result)
    return results


def publish_many(tx: store.Txn, publishes: Sequence[PublishCall]) -> list[Any]:
    """Publish in order, as many ``store.publish`` calls would, with fewer statements:
    routes are computed once per distinct (exchange, routing key) (headers-free publishes
    only: headers may change a route) and runs of plain publishes are inserted with
    ``executemany``. Anything else (headers, TTL, limits, delay, message ids for
    deduplication) goes through ``store.publish`` itself, after flushing the run before it,
    so queue order is publish order."""
    if not publishes:
        return []
    store.refuse_when_disk_low(tx)
    conn = tx.conn
    # (exchange, routing key) -> (targets, plain): plain when no target has a TTL or a
    # length limit (otherwise such publishes take the full path)
    routes: dict[tuple[str, str], tuple[dict[int, Any], bool]] = {}
    results: list[Any] = []
    inline: list[tuple[Any, ...]] = []  # entries of messages routed to one queue
    shared: list[tuple[Any, ...]] = []  # messages routed to several queues
    entries: list[tuple[int, int, int]] = []  # (index in shared, queue, priority)

    def flush() -> None:
        if inline:
            _insert_inline_rows(conn, inline)
            inline.clear()
        if not shared:
            return
        # We hold the write lock: the next ids are ours. Explicit ids let executemany
        # insert the run and its entries without a round trip per message.
        first = conn.execute(SELECT_LAST_MESSAGE_ID).fetchone()[0] + 1
        conn.executemany(
            INSERT_MESSAGE_WITH_ID, [(first + i, *row) for i, row in enumerate(shared)]
        )
        conn.executemany(
            sql.INSERT_ENTRY_SHARED,
            [(q, p, None, None, None, None, first + i) for i, q, p in entries],
        )
        shared.clear()
        entries.clear()

    for args, extra in publishes:
        exchange, routing_key, body, properties, priority, headers = args[:6]
        if headers or len(args) > 6 or not _BATCHABLE_EXTRA.issuperset(extra):
            flush()
            results.append(store.publish(tx, *args, **extra))
            continue
        route = routes.get((exchange, routing_key))
        if route is None:
            found = store._route(tx, exchange, routing_key, None)
            plain = not any(
                t[1] is not None or t[2] is not None or t[3] is not None for t in found.values()
            )
            route = routes[(exchange, routing_key)] = (found, plain)
        targets, plain = route
        if not targets:
            conn.execute(sql.INCREMENT_COUNTER, ("unroutable", 1))
            results.append(0)
            continue
        if not plain:
            flush()  # TTL or a length limit: the full path, in order
            results.append(store.publish(tx, *args, **extra))
            continue
        message = (
            exchange,
            routing_key,
            properties,
            body,
            tx.wall_ms,
            extra.get("amqp_properties"),
        )
        if len(targets) == 1:
            # Queue order is publish order (entry ids): a run holds one kind of message at
            # a time, so a change of kind flushes it.
            if shared:
                flush()
            ((queue_id, target),) = targets.items()
            inline.append((queue_id, store.capped_priority(priority, target[0]), *message))
        else:
            if inline:
                flush()
            index = len(shared)
            shared.append(message)
            for queue_id, target in targets.items():
                entries.append((index, queue_id, store.capped_priority(priority, target[0])))
        tx.touched.update(targets)
        results.append(len(targets))
    flush()
    return results


def publish_batch(
    tx: store.Txn,
    exchange: str,
    routing_key: str,
    bodies: Sequence[bytes],
    properties: str | None,
    priority: int,
    headers: Any,
    extra: dict[str, Any],
) -> list[Any]:
    """The store side of basic_publish_batch: many bodies with one exchange, routing key
    and properties, routed once. The common case (one queue without TTL or length limit;
    no headers, delay or message id) is one executemany; anything else is publish_many's.
    Raises TxRefused (so nothing is stored) when a full queue refuses one."""
    store.refuse_when_disk_low(tx)
    if not headers and _BATCHABLE_EXTRA.issuperset(extra):
        targets = store._route(tx, exchange, routing_key, None)
        if not targets:
            tx.conn.execute(sql.INCREMENT_COUNTER, ("unroutable", len(bodies)))
            return [0] * len(bodies)
        if len(targets) == 1:
            ((queue_id, (max_priority, ttl, max_len, max_bytes)),) = targets.items()
            if ttl is None and max_len is None and max_bytes is None:
                entry_priority = store.capped_priority(priority, max_priority)
                shared = (queue_id, entry_priority, exchange, routing_key, properties)
                shared += (tx.wall_ms, extra.get("amqp_properties"))
                _insert_inline_batch(tx.conn, shared, bodies)
                tx.touched.add(queue_id)
                return [1] * len(bodies)
    args = (exchange, routing_key)
    results = publish_many(
        tx, [((*args, body, properties, priority, headers), extra) for body in bodies]
    )
    for index, result in enumerate(results):
        if isinstance(result, store.Refused):
            raise TxRefused(index, result)
    return results


def _insert_inline_batch(
    conn: sqlite3.Connection, shared: tuple[Any, ...], bodies: Sequence[bytes]
) -> None:
    """Insert ``bodies`` in order, sharing every other column (sql.insert_inline_batch)."""
    for start, size in _chunks(len(bodies)):
        conn.execute(sql.insert_inline_batch(size), (*shared, *bodies[start : start + size]))


def _insert_inline_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert whole inline entries (sql.INLINE_ROW_COLUMNS) in order."""
    for start, size in _chunks(len(rows)):
        params = [value for row in rows[start : start + size] for value in row]
        conn.execute(sql.insert_inline_rows(size), params)


def _chunks(count: int) -> Iterator[tuple[int, int]]:
    """(start, size) of consecutive chunks covering ``count`` items, largest sizes first,
    each size one the multi-row statements are built for (sql.INLINE_BATCH_SIZES)."""
    start = 0
    for size in sql.INLINE_BATCH_SIZES:
        while count - start >= size:
            yield start, size
            start += size
