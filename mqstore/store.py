"""Broker operations on an SQLite connection: one function per operation.

Each function runs inside a write transaction the engine opened (BEGIN IMMEDIATE), possibly
batched with other operations behind SAVEPOINTs (group commit). A function raises an mqstore
error before it writes anything, so a refused operation leaves no trace; it records the
queues it made deliverable in ``tx.touched`` so waiting consumers are woken after COMMIT.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import codec, core, errors, routing, sql
from .types import LeasedMessage, QueueDeclareOk


@dataclass(slots=True)
class Txn:
    """The transaction an operation runs in, with the time read once for the batch."""

    conn: sqlite3.Connection
    now_ms: int
    wall_ms: int
    touched: set[int] = field(default_factory=set)
    queues_deleted: bool = False
    # The shortest lease taken in this transaction: the engine renews at least that often.
    shortest_lease_ms: int | None = None
    # Free disk space is below the limit: publishes are refused (wal.DiskGuard).
    low_disk: bool = False


# --- exchanges ----------------------------------------------------------------------------


def ensure_system_exchanges(tx: Txn) -> None:
    rows = [
        (name, kind, True, False, False, None, tx.wall_ms)
        for name, kind in core.SYSTEM_EXCHANGES.items()
    ]
    tx.conn.executemany(sql.INSERT_EXCHANGE_IF_MISSING, rows)


def exchange_declare(
    tx: Txn,
    name: str,
    exchange_type: str,
    *,
    passive: bool,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: Mapping[str, Any] | None,
) -> None:
    row = tx.conn.execute(sql.SELECT_EXCHANGE, (name,)).fetchone()
    if passive:
        if row is None:
            raise core.no_exchange(name)
        return
    if name == "":
        raise errors.AccessRefusedError(
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        )
    if row is None:
        args = codec.encode_table(arguments) if arguments else None
        tx.conn.execute(
            sql.INSERT_EXCHANGE,
            (name, exchange_type, durable, auto_delete, internal, args, tx.wall_ms),
        )
        return
    current = {"type": row[1], "durable": row[2], "auto_delete": row[3], "internal": row[4]}
    core.check_exchange_equivalence(
        name,
        current,
        exchange_type=exchange_type,
        durable=durable,
        auto_delete=auto_delete,
        internal=internal,
    )


def exchange_delete(tx: Txn, name: str, *, if_unused: bool) -> None:
    if name == "":
        raise errors.AccessRefusedError(
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        )
    if name.startswith("amq."):
        raise errors.AccessRefusedError(
            f"ACCESS_REFUSED - deletion of system {core.exchange_desc(name)} not allowed"
        )
    if tx.conn.execute(sql.SELECT_EXCHANGE, (name,)).fetchone() is None:
        return  # RabbitMQ answers delete-ok for a missing exchange.
    if if_unused and tx.conn.execute(sql.EXCHANGE_HAS_BINDINGS, (name,)).fetchone():
        raise core.precondition(f"{core.exchange_desc(name)} in use")
    tx.conn.execute(sql.DELETE_EXCHANGE, (name,))


# --- queues -------------------------------------------------------------------------------


def _queue_row(tx: Txn, name: str) -> dict[str, Any] | None:
    row = tx.conn.execute(sql.SELECT_QUEUE, (name,)).fetchone()
    if row is None:
        return None
    keys = (
        "id",
        "name",
        "durable",
        "exclusive_owner",
        "auto_delete",
        "arguments",
        "visibility_timeout_ms",
        "consumer_timeout_ms",
        "max_priority",
    )
    queue = dict(zip(keys, row, strict=True))
    queue["arguments"] = codec.decode_table(queue["arguments"]) if queue["arguments"] else {}
    return queue


def _accessible_queue(tx: Txn, session: int, name: str) -> dict[str, Any]:
    """The queue, or 404 when missing, 405 when another connection owns it exclusively."""
    queue = _queue_row(tx, name)
    if queue is None:
        raise core.no_queue(name)
    if queue["exclusive_owner"] not in (None, session):
        raise core.resource_locked(name)
    return queue


def _counts(tx: Txn, queue_id: int) -> tuple[int, int]:
    ready = tx.conn.execute(sql.COUNT_READY, (queue_id,)).fetchone()[0]
    consumers = tx.conn.execute(sql.COUNT_CONSUMERS, (queue_id,)).fetchone()[0]
    return ready, consumers


def queue_declare(
    tx: Txn,
    session: int,
    name: str,
    *,
    passive: bool,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: Mapping[str, Any] | None,
) -> QueueDeclareOk:
    if passive:
        queue = _accessible_queue(tx, session, name)
        return QueueDeclareOk(name, *_counts(tx, queue["id"]))
    if name == "":
        name = core.server_queue_name()
    settings = core.queue_settings(name, arguments)
    queue = _queue_row(tx, name)
    if queue is not None:
        owner = queue["exclusive_owner"]
        if owner not in (None, session) or exclusive != (owner is not None):
            raise core.resource_locked(name)
        core.check_queue_equivalence(
            name, queue, durable=durable, auto_delete=auto_delete, arguments=arguments
        )
        return QueueDeclareOk(name, *_counts(tx, queue["id"]))
    tx.conn.execute(
        sql.INSERT_QUEUE,
        (
            name,
            durable,
            session if exclusive else None,
            auto_delete,
            codec.encode_table(arguments) if arguments else None,
            settings.visibility_timeout_ms,
            settings.consumer_timeout_ms,
            settings.max_priority,
            tx.wall_ms,
        ),
    ).fetchone()
    return QueueDeclareOk(name, 0, 0)


def _drop_queue(tx: Txn, queue_id: int) -> None:
    """Delete a queue with its entries, bindings and consumers; then auto-delete exchanges
    that lost their last binding."""
    exchanges = [r[0] for r in tx.conn.execute(sql.SELECT_QUEUE_EXCHANGES, (queue_id,))]
    tx.conn.execute(sql.DELETE_QUEUE, (queue_id,))
    for exchange in exchanges:
        tx.conn.execute(sql.DELETE_UNUSED_AUTO_DELETE_EXCHANGE, (exchange, exchange))
    tx.queues_deleted = True


def queue_delete(tx: Txn, session: int, name: str, *, if_unused: bool, if_empty: bool) -> int:
    queue = _queue_row(tx, name)
    if queue is None:
        return 0  # RabbitMQ answers delete-ok with a count of 0.
    if queue["exclusive_owner"] not in (None, session):
        raise core.resource_locked(name)
    ready, consumers = _counts(tx, queue["id"])
    if if_unused and consumers:
        raise core.precondition(f"{core.queue_desc(name)} in use")
    if if_empty and ready:
        raise core.precondition(f"{core.queue_desc(name)} not empty")
    _drop_queue(tx, queue["id"])
    return ready


def queue_purge(tx: Txn, session: int, name: str) -> int:
    queue = _accessible_queue(tx, session, name)
    return tx.conn.execute(sql.PURGE_READY, (queue["id"],)).rowcount


def _binding_target(tx: Txn, session: int, queue: str, exchange: str) -> tuple[int, str]:
    if exchange == "":
        raise errors.AccessRefusedError(
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        )
    row = tx.conn.execute(sql.SELECT_EXCHANGE, (exchange,)).fetchone()
    if row is None:
        raise core.no_exchange(exchange)
    target = _accessible_queue(tx, session, queue)
    return target["id"], row[1]


def queue_bind(
    tx: Txn,
    session: int,
    queue: str,
    exchange: str,
    routing_key: str,
    arguments: Mapping[str, Any] | None,
) -> None:
    queue_id, exchange_type = _binding_target(tx, session, queue, exchange)
    core.check_binding_arguments(exchange_type, arguments)
    args = codec.encode_table(arguments) if arguments else ""
    tx.conn.execute(sql.INSERT_BINDING, (exchange, queue_id, routing_key, args))


def queue_unbind(
    tx: Txn,
    session: int,
    queue: str,
    exchange: str,
    routing_key: str,
    arguments: Mapping[str, Any] | None,
) -> None:
    queue_id, _ = _binding_target(tx, session, queue, exchange)
    args = codec.encode_table(arguments) if arguments else ""
    tx.conn.execute(sql.DELETE_BINDING, (exchange, queue_id, routing_key, args))
    tx.conn.execute(sql.DELETE_UNUSED_AUTO_DELETE_EXCHANGE, (exchange, exchange))


def _exchange_pair(tx: Txn, destination: str, source: str) -> str:
    """The source's type, after RabbitMQ's checks: 403 for the default exchange, 404 for a
    missing source or destination."""
    if destination == "" or source == "":
        raise errors.AccessRefusedError(
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        )
    source_row = tx.conn.execute(sql.SELECT_EXCHANGE, (source,)).fetchone()
    if source_row is None:
        raise core.no_exchange(source)
    if tx.conn.execute(sql.SELECT_EXCHANGE, (destination,)).fetchone() is None:
        raise core.no_exchange(destination)
    return str(source_row[1])


def exchange_bind(
    tx: Txn,
    destination: str,
    source: str,
    routing_key: str,
    arguments: Mapping[str, Any] | None,
) -> None:
    """AMQP exchange.bind: messages ``source`` routes with ``routing_key`` also go through
    ``destination``."""
    core.check_binding_arguments(_exchange_pair(tx, destination, source), arguments)
    args = codec.encode_table(arguments) if arguments else ""
    tx.conn.execute(sql.INSERT_EXCHANGE_BINDING, (source, destination, routing_key, args))


def exchange_unbind(
    tx: Txn,
    destination: str,
    source: str,
    routing_key: str,
    arguments: Mapping[str, Any] | None,
) -> None:
    """Remove an exchange-to-exchange binding; a missing one is not an error (RabbitMQ)."""
    _exchange_pair(tx, destination, source)
    args = codec.encode_table(arguments) if arguments else ""
    tx.conn.execute(sql.DELETE_EXCHANGE_BINDING, (source, destination, routing_key, args))
    tx.conn.execute(sql.DELETE_UNUSED_AUTO_DELETE_EXCHANGE, (source, source))


# --- publish ------------------------------------------------------------------------------


def _route(
    tx: Txn, exchange: str, routing_key: str, headers: Mapping[str, Any] | None
) -> list[tuple[int, int | None]]:
    """(queue id, max priority) of every queue the message goes to."""
    conn = tx.conn
    if exchange == "":
        row = conn.execute(sql.ROUTE_DEFAULT, (routing_key,)).fetchone()
        return [row] if row else []
    row = conn.execute(sql.SELECT_EXCHANGE, (exchange,)).fetchone()
    if row is None:
        raise core.no_exchange(exchange)
    if row[4]:
        raise errors.AccessRefusedError(
            f"ACCESS_REFUSED - cannot publish to internal {core.exchange_desc(exchange)}"
        )
    targets: dict[int, int | None] = {}
    # Exchange-to-exchange bindings: route on through every destination the message
    # matches, each exchange once (bindings may form cycles).
    pending = [(exchange, row[1])]
    seen = {exchange}
    while pending:
        name, kind = pending.pop()
        if kind == "direct":
            targets.update(conn.execute(sql.ROUTE_DIRECT, (name, routing_key)).fetchall())
        else:
            for queue_id, max_priority, key, args in conn.execute(sql.ROUTE_ALL, (name,)):
                if queue_id not in targets and _matches(kind, key, args, routing_key, headers):
                    targets[queue_id] = max_priority
        for destination, dest_kind, key, args in conn.execute(sql.ROUTE_EXCHANGES, (name,)):
            if destination not in seen and _matches(kind, key, args, routing_key, headers):
                seen.add(destination)
                pending.append((destination, dest_kind))
    return list(targets.items())


def _matches(
    kind: str, key: str, args: str, routing_key: str, headers: Mapping[str, Any] | None
) -> bool:
    """Does a binding of an exchange of type ``kind`` take this message?"""
    if kind == "direct":
        return key == routing_key
    if kind == "fanout":
        return True
    if kind == "topic":
        return routing.compile_topic(key)(routing_key)
    return routing.headers_match(codec.decode_table(args) if args else {}, headers)


def publish(
    tx: Txn,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: str | None,
    priority: int,
    headers: Mapping[str, Any] | None,
    amqp_properties: bytes | None = None,
) -> int:
    """Route and store one message; returns the number of queues it reached (0: dropped and
    counted as unroutable). ``amqp_properties``: the raw AMQP property bytes an AMQP
    publisher sent, stored beside the decoded ``properties`` so delivery loses nothing."""
    if tx.low_disk:
        raise errors.StoreFullError(
            "free disk space is below the limit: publish refused (not stored); acks and "
            "deletes still work so consumers can drain"
        )
    targets = _route(tx, exchange, routing_key, headers)
    if not targets:
        tx.conn.execute(sql.INCREMENT_COUNTER, ("unroutable", 1))
        return 0
    cursor = tx.conn.execute(
        sql.INSERT_MESSAGE, (exchange, routing_key, properties, body, tx.wall_ms, amqp_properties)
    )
    message_id = cursor.lastrowid
    if len(targets) == 1:
        queue_id, max_priority = targets[0]
        entry_priority = min(priority, max_priority) if max_priority else 0
        tx.conn.execute(sql.INSERT_ENTRY, (queue_id, message_id, entry_priority))
    else:
        tx.conn.executemany(
            sql.INSERT_ENTRY,
            [(q, message_id, min(priority, mp) if mp else 0) for q, mp in targets],
        )
    tx.touched.update(q for q, _ in targets)
    return len(targets)


# --- leasing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """Lease up to ``limit`` messages from ``queue`` for ``owner`` (deleted at once when
    ``auto_ack``)."""

    queue: str
    limit: int
    auto_ack: bool
    visibility_timeout_ms: int
    with_count: bool = False


def lease(
    tx: Txn, session: int, requests: Sequence[LeaseRequest]
) -> list[list[LeasedMessage] | None]:
    """Lease messages for several consumers in one transaction. A result is None when the
    queue no longer exists (its consumer is cancelled)."""
    requeue_expired(tx)
    results: list[list[LeasedMessage] | None] = []
    for request in requests:
        queue = _queue_row(tx, request.queue)
        if queue is None:
            results.append(None)
            continue
        results.append(_lease_one(tx, session, queue, request))
    return results


def get(tx: Txn, session: int, request: LeaseRequest) -> list[LeasedMessage]:
    """basic_get: lease (or take, with auto_ack) the head of one queue; 404/405 as consume."""
    requeue_expired(tx)
    queue = _accessible_queue(tx, session, request.queue)
    return _lease_one(tx, session, queue, request)


def _lease_one(
    tx: Txn, session: int, queue: dict[str, Any], request: LeaseRequest
) -> list[LeasedMessage]:
    conn = tx.conn
    rows = conn.execute(sql.SELECT_READY, (queue["id"], request.limit)).fetchall()
    if not rows:
        return []
    ids = json.dumps([r[0] for r in rows])
    token = 0
    if request.auto_ack:
        conn.execute(sql.DELETE_ENTRIES, (ids,))
    else:
        token = core.new_lease_token()
        vt = queue["visibility_timeout_ms"] or request.visibility_timeout_ms
        if tx.shortest_lease_ms is None or vt < tx.shortest_lease_ms:
            tx.shortest_lease_ms = vt
        conn.execute(sql.LEASE_ENTRIES, (token, session, tx.now_ms, tx.now_ms + vt, ids))
    count = conn.execute(sql.COUNT_READY, (queue["id"],)).fetchone()[0] if request.with_count else 0
    name = queue["name"]
    return [
        LeasedMessage(
            entry_id=entry_id,
            token=token,
            queue=name,
            exchange=exchange,
            routing_key=routing_key,
            properties=codec.decode_properties(props) if props else {},
            body=body,
            delivery_count=delivered + 1,
            message_count=count,
            amqp_properties=amqp_props,
            consumer_timeout_ms=queue["consumer_timeout_ms"],
        )
        for entry_id, delivered, exchange, routing_key, props, body, amqp_props in rows
    ]


def ack(tx: Txn, leases: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Delete acknowledged entries; returns the (entry, token) pairs whose lease was lost."""
    stale = []
    for pair in leases:
        if tx.conn.execute(sql.ACK_ENTRY, pair).rowcount != 1:
            stale.append(pair)
    return stale


def release(tx: Txn, leases: Iterable[tuple[int, int]], *, requeue: bool) -> list[tuple[int, int]]:
    """Nack/reject: requeue (keeping the message's place) or drop; returns the lost leases."""
    if not requeue:
        return ack(tx, leases)
    stale = []
    for pair in leases:
        row = tx.conn.execute(sql.REQUEUE_ENTRY, pair).fetchone()
        if row is None:
            stale.append(pair)
        else:
            tx.touched.add(row[0])
    return stale


def requeue_owner(tx: Txn, session: int) -> int:
    queue_ids = [r[0] for r in tx.conn.execute(sql.REQUEUE_OWNER, (session,))]
    tx.touched.update(queue_ids)
    return len(queue_ids)


def requeue_expired(tx: Txn) -> int:
    queue_ids = [r[0] for r in tx.conn.execute(sql.REQUEUE_EXPIRED, (tx.now_ms,))]
    tx.touched.update(queue_ids)
    return len(queue_ids)


def renew(tx: Txn, sessions: Mapping[int, int]) -> None:
    """Heartbeat each live session and extend its leases (session -> default lease ms)."""
    for session, default_vt in sessions.items():
        tx.conn.execute(sql.HEARTBEAT_SESSION, (tx.now_ms, session))
        tx.conn.execute(sql.RENEW_OWNER, (tx.now_ms, default_vt, session, tx.now_ms, tx.now_ms))


# --- consumers and sessions ---------------------------------------------------------------


def add_consumer(tx: Txn, session: int, queue: str, tag: str, *, exclusive: bool) -> int:
    """Register a consumer (for consumer_count, exclusivity and auto-delete); returns its id."""
    target = _accessible_queue(tx, session, queue)
    in_exclusive_use = tx.conn.execute(sql.SELECT_EXCLUSIVE_CONSUMER, (target["id"],)).fetchone()
    if in_exclusive_use or (exclusive and _counts(tx, target["id"])[1]):
        raise errors.AccessRefusedError(
            f"ACCESS_REFUSED - {core.queue_desc(queue)} in exclusive use"
        )
    row = tx.conn.execute(sql.INSERT_CONSUMER, (session, target["id"], tag, exclusive))
    return int(row.fetchone()[0])


def remove_consumer(tx: Txn, consumer_id: int) -> None:
    """Unregister a consumer; an auto-delete queue goes with its last consumer."""
    row = tx.conn.execute(sql.DELETE_CONSUMER, (consumer_id,)).fetchone()
    if row is None:
        return
    queue_id = row[0]
    deleted = tx.conn.execute(sql.DELETE_QUEUE_IF_UNUSED_AUTO_DELETE, (queue_id, queue_id))
    if deleted.rowcount:
        # The queue is gone; its bindings went with it (ON DELETE CASCADE).
        tx.queues_deleted = True


def open_session(tx: Txn, pid: int, process_start: str, boot: str, name: str | None) -> int:
    row = tx.conn.execute(
        sql.INSERT_SESSION, (pid, process_start, boot, tx.now_ms, tx.wall_ms, name)
    ).fetchone()
    return int(row[0])


def close_session(tx: Txn, session: int) -> None:
    """A connection ends: requeue its deliveries, drop its consumers and exclusive queues."""
    requeue_owner(tx, session)
    for (consumer_id,) in tx.conn.execute(sql.SELECT_SESSION_CONSUMERS, (session,)).fetchall():
        remove_consumer(tx, consumer_id)
    for (queue_id,) in tx.conn.execute(sql.SELECT_EXCLUSIVE_QUEUES, (session,)).fetchall():
        _drop_queue(tx, queue_id)
    tx.conn.execute(sql.DELETE_SESSION, (session,))


def sessions(tx: Txn) -> list[tuple[int, int, str, str]]:
    return tx.conn.execute(sql.SELECT_SESSIONS).fetchall()


def void_all_leases(tx: Txn) -> None:
    tx.conn.execute(sql.VOID_ALL_LEASES)


def get_meta(tx: Txn, key: str) -> str | None:
    row = tx.conn.execute(sql.SELECT_META, (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(tx: Txn, key: str, value: str) -> None:
    tx.conn.execute(sql.UPSERT_META, (key, value))


def counters(tx: Txn) -> dict[str, int]:
    return dict(tx.conn.execute(sql.SELECT_COUNTERS).fetchall())
