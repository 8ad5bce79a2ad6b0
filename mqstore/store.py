"""Broker operations on an SQLite connection: one function per operation.

Each function runs inside a write transaction the engine opened (BEGIN IMMEDIATE), possibly
batched with other operations behind SAVEPOINTs (group commit); ``publish_alone``, one
statement, may also run as its own transaction. A function raises an mqstore
error before it writes anything, so a refused operation leaves no trace; it records the
queues it made deliverable in ``tx.touched`` so waiting consumers are woken after COMMIT.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from . import codec, core, errors, routing, sql
from .types import LeasedMessage, QueueDeclareOk

log = logging.getLogger(__name__)

# Expired entries and unused queues handled per sweep (one transaction), so a backlog is
# worked off in bounded steps; SELECT_READY skips expired entries a sweep has not reached.
EXPIRY_BATCH = 500
# Dead-lettering that triggers more dead-lettering (a full DLX target dropping its head ...)
# stops at this depth: cycle detection ends every loop, this only bounds a pathological chain.
MAX_DEAD_LETTER_DEPTH = 32
# The pseudo lease token of a scheduled (delayed) entry: not NULL, so the entry is out of
# ix_mq_entries_ready and the length-limit counts; no real lease has it (tokens are > 0) and
# no lease owner, so no ack, requeue or lease sweep touches it. deliver_at_ms says when due.
SCHEDULED = -1
# Queue ids remembered per engine for the default exchange's plain publish (publish_alone).
QUEUE_IDS_CACHED = 4096


class Txn:
    """The transaction an operation runs in, with the time read once for the batch.

    A plain class with slots (not a dataclass with a default factory): one is made per
    commit, on the path of every sequential durable publish."""

    __slots__ = (
        "_topology",
        "cache",
        "conn",
        "low_disk",
        "now_ms",
        "queues_deleted",
        "scheduled_ms",
        "shortest_lease_ms",
        "touched",
        "wall_ms",
    )

    def __init__(
        self,
        conn: sqlite3.Connection,
        now_ms: int,
        wall_ms: int,
        cache: dict[Any, Any] | None = None,
        low_disk: bool = False,
    ) -> None:
        self.conn = conn
        self.now_ms = now_ms
        self.wall_ms = wall_ms
        # Queues (ids; names on the default exchange's fast path) given deliverable
        # messages.
        self.touched: set[int | str] = set()
        self.queues_deleted = False
        # The shortest lease taken in this transaction: the engine renews at least that
        # often.
        self.shortest_lease_ms: int | None = None
        # Free disk space is below the limit: publishes are refused (wal.DiskGuard).
        self.low_disk = low_disk
        # The earliest deliver_at_ms (wall) a delayed publish in this transaction
        # scheduled: the engine's upkeep thread wakes for it.
        self.scheduled_ms: int | None = None
        # The engine's routing cache (outlives transactions); see _topic_targets.
        self.cache = cache
        self._topology: int | None = None

    def topology(self) -> int:
        """The file's topology version, read once per transaction."""
        if self._topology is None:
            row = self.conn.execute(sql.SELECT_META, ("topology",)).fetchone()
            self._topology = int(row[0]) if row else 0
        return self._topology

    def topology_changed(self) -> None:
        """Bindings or queues changed: routing caches of every process are stale."""
        self.conn.execute(sql.BUMP_TOPOLOGY)
        self._topology = None


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
        # As RabbitMQ: the reserved prefix is checked only for an exchange that does not
        # exist, so an equivalent redeclare of amq.direct is fine (a different type is 406).
        core.check_name("exchange", name)
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
    tx.topology_changed()


# --- queues -------------------------------------------------------------------------------


def _queue_row(tx: Txn, name: str) -> dict[str, Any] | None:
    row = tx.conn.execute(sql.SELECT_QUEUE, (name,)).fetchone()
    if row is None:
        return None
    queue = _queue_dict(row)
    expires_at = queue["expires_at_ms"]
    if expires_at is not None and expires_at <= tx.wall_ms and _expire_queue(tx, queue["id"]):
        return None  # unused past its x-expires: gone, as if the sweep had run
    return queue


_QUEUE_KEYS = (
    "id",
    "name",
    "durable",
    "exclusive_owner",
    "auto_delete",
    "arguments",
    "visibility_timeout_ms",
    "consumer_timeout_ms",
    "max_priority",
    "message_ttl_ms",
    "max_length",
    "max_length_bytes",
    "dead_letter_exchange",
    "delivery_limit",
    "expires_ms",
    "expires_at_ms",
)


def _queue_dict(row: Sequence[Any]) -> dict[str, Any]:
    queue = dict(zip(_QUEUE_KEYS, row, strict=True))
    queue["arguments"] = codec.decode_table(queue["arguments"]) if queue["arguments"] else {}
    return queue


def _queue_by_id(tx: Txn, queue_id: int) -> dict[str, Any] | None:
    row = tx.conn.execute(sql.SELECT_QUEUE_BY_ID, (queue_id,)).fetchone()
    return None if row is None else _queue_dict(row)


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
        _touch_queue(tx, queue)
        return QueueDeclareOk(name, *_counts(tx, queue["id"]))
    features = core.feature_columns(arguments or {})
    expires_ms = features["expires_ms"]
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
            features["message_ttl_ms"],
            features["max_length"],
            features["max_length_bytes"],
            features["dead_letter_exchange"],
            features["delivery_limit"],
            expires_ms,
            None if expires_ms is None else tx.wall_ms + expires_ms,
        ),
    ).fetchone()
    window = core.dedup_window_ms(arguments or {})
    if window is not None:
        tx.conn.execute(sql.SET_DEDUP_WINDOW, (window, name))
    return QueueDeclareOk(name, 0, 0)


def _touch_queue(tx: Txn, queue: Mapping[str, Any]) -> None:
    """x-expires: the queue was used (redeclared, basic.get); restart its timer."""
    if queue["expires_ms"] is not None:
        tx.conn.execute(sql.TOUCH_QUEUE, (tx.wall_ms, queue["id"]))


def _expire_queue(tx: Txn, queue_id: int) -> bool:
    """Delete a queue past its x-expires deadline unless it has consumers. Its messages are
    not dead-lettered (RabbitMQ's rule)."""
    if tx.conn.execute(sql.COUNT_CONSUMERS, (queue_id,)).fetchone()[0]:
        return False
    _drop_queue(tx, queue_id)
    tx.conn.execute(sql.INCREMENT_COUNTER, ("queues_expired", 1))
    return True


def _drop_queue(tx: Txn, queue_id: int) -> None:
    """Delete a queue with its entries, bindings and consumers; then auto-delete exchanges
    that lost their last binding."""
    exchanges = [r[0] for r in tx.conn.execute(sql.SELECT_QUEUE_EXCHANGES, (queue_id,))]
    tx.conn.execute(sql.DELETE_QUEUE, (queue_id,))
    tx.topology_changed()
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
    tx.topology_changed()


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
    tx.topology_changed()
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
    tx.topology_changed()


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
    tx.topology_changed()
    tx.conn.execute(sql.DELETE_UNUSED_AUTO_DELETE_EXCHANGE, (source, source))


# --- publish ------------------------------------------------------------------------------

# What a route gives per target queue: (max_priority, message_ttl_ms, max_length,
# max_length_bytes), the columns of sql.ROUTE_*; None where the feature is off.
Target = tuple[int | None, int | None, int | None, int | None]


def _route(
    tx: Txn, exchange: str, routing_key: str, headers: Mapping[str, Any] | None
) -> dict[int, Target]:
    """Every queue the message goes to (queue id -> Target)."""
    conn = tx.conn
    if exchange == "":
        row = conn.execute(sql.ROUTE_DEFAULT, (routing_key,)).fetchone()
        return {row[0]: row[1:]} if row else {}
    row = conn.execute(sql.SELECT_EXCHANGE, (exchange,)).fetchone()
    if row is None:
        raise core.no_exchange(exchange)
    if row[4]:
        raise errors.AccessRefusedError(
            f"ACCESS_REFUSED - cannot publish to internal {core.exchange_desc(exchange)}"
        )
    return _route_from(tx, exchange, row[1], row[5], routing_key, headers)


def _route_from(
    tx: Txn,
    exchange: str,
    kind: str,
    arguments: str | None,
    routing_key: str,
    headers: Mapping[str, Any] | None,
) -> dict[int, Target]:
    conn = tx.conn
    targets: dict[int, Target] = {}
    # Exchange-to-exchange bindings: route on through every destination the message
    # matches, each exchange once (bindings may form cycles). An exchange whose bindings
    # take the message nowhere hands it to its alternate exchange, as RabbitMQ does.
    pending = [(exchange, kind, arguments)]
    seen = {exchange}
    while pending:
        name, kind, args_text = pending.pop()
        matched = False
        if kind == "direct":
            for route in conn.execute(sql.ROUTE_DIRECT, (name, routing_key)):
                targets[route[0]] = route[1:]
                matched = True
        elif kind == "topic" and tx.cache is not None:
            for queue_id, target in _topic_targets(tx, name, routing_key):
                matched = True
                targets.setdefault(queue_id, target)
        else:
            for queue_id, mp, ttl, ml, mlb, key, args in conn.execute(sql.ROUTE_ALL, (name,)):
                if matched and queue_id in targets:
                    continue
                if _matches(kind, key, args, routing_key, headers):
                    matched = True
                    targets.setdefault(queue_id, (mp, ttl, ml, mlb))
        for destination, dest_kind, key, args, dest_args in conn.execute(
            sql.ROUTE_EXCHANGES, (name,)
        ):
            if matched and destination in seen:
                continue
            if _matches(kind, key, args, routing_key, headers):
                matched = True
                if destination not in seen:
                    seen.add(destination)
                    pending.append((destination, dest_kind, dest_args))
        if not matched and args_text:
            alternate = codec.decode_table(args_text).get("alternate-exchange")
            if isinstance(alternate, str) and alternate not in seen:
                seen.add(alternate)
                row = conn.execute(sql.SELECT_EXCHANGE, (alternate,)).fetchone()
                if row is not None:  # a missing alternate exchange: dropped, as RabbitMQ
                    pending.append((alternate, row[1], row[5]))
    return targets


def _topic_targets(tx: Txn, exchange: str, routing_key: str) -> list[tuple[int, Target]]:
    """Queues a topic exchange's bindings take ``routing_key`` to, through a trie of its
    bindings cached per process and rebuilt when the topology version moves: matching
    costs the key's length, not the number of bindings."""
    assert tx.cache is not None
    version = tx.topology()
    cached = tx.cache.get(("topic", exchange))
    if cached is None or cached[0] != version:
        index = routing.TopicIndex()
        details: dict[int, Target] = {}
        for queue_id, mp, ttl, ml, mlb, key, _ in tx.conn.execute(sql.ROUTE_ALL, (exchange,)):
            index.add(key, queue_id)
            details[queue_id] = (mp, ttl, ml, mlb)
        cached = (version, index, details)
        tx.cache[("topic", exchange)] = cached
    _, index, details = cached
    return [(queue_id, details[queue_id]) for queue_id in sorted(index.match(routing_key))]


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


@dataclass(frozen=True, slots=True)
class Refused:
    """A publish one or more queues refused (``x-overflow`` reject-publish[-dlx]): the
    publisher is nacked. ``routed``: the queues that took it (they keep it, as in
    RabbitMQ)."""

    routed: int
    queues: tuple[str, ...]

    def __bool__(self) -> bool:
        return self.routed > 0


def publish_alone(
    tx: Txn,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: str | None,
    priority: int,
    headers: Mapping[str, Any] | None,
    amqp_properties: bytes | None = None,
    expiration: int | None = None,
    delay: int | None = None,
    message_id: str | None = None,
) -> int:
    """The common case of :func:`publish` (same arguments) in one statement: the default
    exchange, to a queue without TTL, length limit or deduplication, no per-message
    expiration or delay. Returns 1 when stored, 0 when :func:`publish` must route it
    (nothing was written). Being one statement, it may run as its own transaction
    (Engine._run_alone)."""
    if exchange != "" or expiration is not None or delay:
        return 0
    refuse_when_disk_low(tx)
    values = (routing_key, priority, properties, body, tx.wall_ms, amqp_properties)
    ids = _queue_ids(tx)
    queue_id = ids.get(routing_key)
    if queue_id is not None:
        if properties is None and not priority and amqp_properties is None:
            stored = tx.conn.execute(
                sql.PUBLISH_DEFAULT_BARE_BY_ID, (routing_key, body, tx.wall_ms, queue_id)
            ).rowcount
        else:
            stored = tx.conn.execute(sql.PUBLISH_DEFAULT_PLAIN_BY_ID, (*values, queue_id)).rowcount
        if stored:
            tx.touched.add(routing_key)
            return stored
        del ids[routing_key]  # deleted, or not plain any more
    stored = tx.conn.execute(sql.PUBLISH_DEFAULT_PLAIN, values).rowcount
    if stored:
        tx.touched.add(routing_key)
        row = tx.conn.execute(sql.QUEUE_ID_BY_NAME, (routing_key,)).fetchone()
        if row is not None:
            if len(ids) >= QUEUE_IDS_CACHED:
                ids.clear()
            ids[routing_key] = row[0]
    return stored


def _queue_ids(tx: Txn) -> dict[str, int]:
    """Queue ids by name, remembered in the engine's cache for PUBLISH_DEFAULT_PLAIN_BY_ID
    (hints only: that statement checks the name and the queue's arguments)."""
    if tx.cache is None:
        return {}
    ids = tx.cache.get("queue ids")
    if ids is None:
        ids = tx.cache["queue ids"] = {}
    return ids


def publish(
    tx: Txn,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: str | None,
    priority: int,
    headers: Mapping[str, Any] | None,
    amqp_properties: bytes | None = None,
    expiration: int | None = None,
    delay: int | None = None,
    message_id: str | None = None,
) -> int | Refused:
    """Route and store one message; returns the number of queues it reached (0: dropped and
    counted as unroutable), or :class:`Refused` when a full queue refused it. ``expiration``:
    the message's per-message TTL in ms. ``amqp_properties``: the raw AMQP property bytes an
    AMQP publisher sent, stored beside the decoded ``properties`` so delivery loses
    nothing. ``delay``: ms before the message becomes deliverable (x-delay, delay=)."""
    if publish_alone(
        tx,
        exchange,
        routing_key,
        body,
        properties,
        priority,
        headers,
        amqp_properties,
        expiration,
        delay,
    ):
        return 1
    refuse_when_disk_low(tx)
    targets: Mapping[int, Target] | None = None
    if exchange == "":
        row = tx.conn.execute(sql.ROUTE_DEFAULT, (routing_key,)).fetchone()
        if row is None:
            tx.conn.execute(sql.INCREMENT_COUNTER, ("unroutable", 1))
            return 0
        queue_id, max_priority, ttl, max_len, max_bytes = row
        plain = expiration is None and ttl is None and max_len is None and max_bytes is None
    else:
        targets = _route(tx, exchange, routing_key, headers)
        if not targets:
            tx.conn.execute(sql.INCREMENT_COUNTER, ("unroutable", 1))
            return 0
        plain = False
        if len(targets) == 1 and expiration is None:
            ((queue_id, (max_priority, ttl, max_len, max_bytes)),) = targets.items()
            plain = ttl is None and max_len is None and max_bytes is None
    if message_id is not None:
        # x-deduplication-window queues may drop it (_publish_deduplicated).
        if targets is None:
            targets = {queue_id: (max_priority, ttl, max_len, max_bytes)}
        message = (exchange, routing_key, properties, body, amqp_properties)
        deliver_at = tx.wall_ms + delay if delay is not None and delay > 0 else None
        return _publish_deduplicated(
            tx, targets, message, priority, expiration, message_id, deliver_at
        )
    if delay is not None and delay > 0:
        if targets is None:
            targets = {queue_id: (max_priority, ttl, max_len, max_bytes)}
        message = (exchange, routing_key, properties, body, amqp_properties)
        return _schedule(tx, targets, message, priority, expiration, tx.wall_ms + delay)
    if plain:
        # The common case: one queue, no TTL, no length limit; one row.
        entry_priority = capped_priority(priority, max_priority)
        message = (exchange, routing_key, properties, body, amqp_properties)
        insert_message(tx, message, ((queue_id, entry_priority, None, None, None, None),))
        tx.touched.add(queue_id)
        return 1
    if targets is None:
        targets = {queue_id: (max_priority, ttl, max_len, max_bytes)}
    message = (exchange, routing_key, properties, body, amqp_properties)
    routed, refused = _store(tx, targets, message, priority, expiration, None, 0)
    if refused:
        return Refused(routed, tuple(refused))
    return routed


def refuse_when_disk_low(tx: Txn) -> None:
    """Publishes are refused below the disk-free limit (wal.DiskGuard), before anything is
    written; acks and deletes go on."""
    if tx.low_disk:
        raise errors.StoreFullError(
            "free disk space is below the limit: publish refused (not stored); acks and "
            "deletes still work so consumers can drain"
        )


def capped_priority(priority: int, max_priority: int | None) -> int:
    """A message's priority in a queue: capped at its x-max-priority; 0 without one."""
    return min(priority, max_priority) if max_priority else 0


def insert_message(
    tx: Txn,
    message: tuple[str, str, str | None, bytes, bytes | None],
    rows: Sequence[tuple[int, int, int | None, int | None, int | None, int | None]],
) -> None:
    """Store ``message`` (exchange, routing key, properties, body, AMQP property bytes) in
    the entries ``rows`` (queue, priority, expires_at, size, lease_token, deliver_at): inline
    in its entry when it went to one queue, once in mq_messages when it went to several."""
    exchange, routing_key, properties, body, amqp_properties = message
    if len(rows) == 1:
        tx.conn.execute(
            sql.INSERT_ENTRY_INLINE,
            (*rows[0], exchange, routing_key, properties, body, tx.wall_ms, amqp_properties),
        )
    else:
        message_id = tx.conn.execute(
            sql.INSERT_MESSAGE,
            (exchange, routing_key, properties, body, tx.wall_ms, amqp_properties),
        ).lastrowid
        tx.conn.executemany(sql.INSERT_ENTRY_SHARED, [(*row, message_id) for row in rows])
    # Ready entries of length-limited queues (a size) count toward their limits: here, the
    # one place that inserts them; the mq_entries_count_* triggers follow them afterwards.
    for queue_id, _, _, size, lease_token, _ in rows:
        if size is not None and lease_token is None:
            tx.conn.execute(sql.COUNT_READY_ENTRY, (size, queue_id))


def _store(
    tx: Txn,
    targets: Mapping[int, Target],
    message: tuple[str, str, str | None, bytes, bytes | None],
    priority: int,
    expiration: int | None,
    fields: dict[str, Any] | None,
    depth: int,
) -> tuple[int, list[str]]:
    """Store a routed message in its target queues, applying their TTL and length limits.
    Returns (queues that took it, names of queues that refused it). ``fields``: the decoded
    properties, when the caller has them (dead-lettering)."""
    body = message[3]
    accepted: list[tuple[int, Target]] = []
    refused: list[str] = []
    limited: list[dict[str, Any]] = []
    for queue_id, target in targets.items():
        if target[2] is not None or target[3] is not None:
            queue = _queue_by_id(tx, queue_id)
            if queue is None:
                continue
            if depth == 0:
                expire_entries(tx)  # expired messages do not count
            overflow = queue["arguments"].get("x-overflow", "drop-head")
            if overflow != "drop-head" and _is_full(tx, queue, len(body)):
                refused.append(queue["name"])
                tx.conn.execute(sql.INCREMENT_COUNTER, ("rejected_publishes", 1))
                if overflow == "reject-publish-dlx" and queue["dead_letter_exchange"] is not None:
                    if fields is None:
                        fields = codec.decode_properties(message[2]) if message[2] else {}
                    _dead_letter_copy(tx, queue, message, fields, "maxlen", depth)
                continue
            if overflow == "drop-head":
                limited.append(queue)
        accepted.append((queue_id, target))
    if not accepted:
        return 0, refused
    rows = []
    for queue_id, (max_priority, ttl, max_len, max_bytes) in accepted:
        entry_priority = capped_priority(priority, max_priority)
        expires_at = None
        if ttl is not None or expiration is not None:
            # The lower of the queue's and the message's TTL applies (RabbitMQ's rule).
            lifetime = min(t for t in (ttl, expiration) if t is not None)
            expires_at = tx.wall_ms + lifetime
        size = len(body) if max_len is not None or max_bytes is not None else None
        rows.append((queue_id, entry_priority, expires_at, size, None, None))
    insert_message(tx, message, rows)
    tx.touched.update(q for q, _ in accepted)
    for queue in limited:
        _drop_head(tx, queue, depth)
    return len(accepted), refused


def _schedule(
    tx: Txn,
    targets: Mapping[int, Target],
    message: tuple[str, str, str | None, bytes, bytes | None],
    priority: int,
    expiration: int | None,
    deliver_at: int,
) -> int:
    """Store a delayed message: its entries wait, out of the ready index, until
    ``deliver_at`` (wall ms). As with RabbitMQ's delayed-message exchange, the message is
    not in its queues until then: it counts toward no length limit, and its TTL starts when
    it becomes deliverable. Routing happens now, though (the plugin routes when due)."""
    body = message[3]
    rows = []
    for queue_id, (max_priority, ttl, max_len, max_bytes) in targets.items():
        entry_priority = capped_priority(priority, max_priority)
        expires_at = None
        if ttl is not None or expiration is not None:
            lifetime = min(t for t in (ttl, expiration) if t is not None)
            expires_at = deliver_at + lifetime
        size = len(body) if max_len is not None or max_bytes is not None else None
        rows.append((queue_id, entry_priority, expires_at, size, SCHEDULED, deliver_at))
    insert_message(tx, message, rows)
    if tx.scheduled_ms is None or deliver_at < tx.scheduled_ms:
        tx.scheduled_ms = deliver_at
    return len(rows)


def promote_due(tx: Txn) -> int:
    """Make delayed entries that are due deliverable (ix_mq_entries_scheduled: nothing is
    read when nothing is due), up to EXPIRY_BATCH; wake their consumers; bring a drop-head
    queue a promotion overfilled back within its length limit."""
    if tx.conn.execute(sql.ANY_DUE, (tx.wall_ms,)).fetchone() is None:
        return 0
    rows = tx.conn.execute(sql.PROMOTE_DUE, (tx.wall_ms, EXPIRY_BATCH)).fetchall()
    limited: set[int] = set()
    for queue_id, counted in rows:
        tx.touched.add(queue_id)
        if counted:
            limited.add(queue_id)
    for queue_id in limited:
        queue = _queue_by_id(tx, queue_id)
        if queue is not None and queue["arguments"].get("x-overflow", "drop-head") == "drop-head":
            _drop_head(tx, queue, 0)
    return len(rows)


def next_due(tx: Txn) -> int | None:
    """When (wall ms) the next delayed entry becomes deliverable; None if none waits."""
    row = tx.conn.execute(sql.NEXT_DUE).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _within(max_len: int | None, max_bytes: int | None, count: int, total: int) -> bool:
    return (max_len is None or count <= max_len) and (max_bytes is None or total <= max_bytes)


def _is_full(tx: Txn, queue: Mapping[str, Any], size: int) -> bool:
    """Would one more message of ``size`` bytes exceed the queue's length limits?"""
    count, total = tx.conn.execute(sql.SELECT_READY_COUNTS, (queue["id"],)).fetchone()
    return not _within(queue["max_length"], queue["max_length_bytes"], count + 1, total + size)


def _drop_head(tx: Txn, queue: Mapping[str, Any], depth: int) -> None:
    """drop-head: remove (dead-letter, reason maxlen) messages from the head of the queue
    until it is within its limits again."""
    max_len, max_bytes = queue["max_length"], queue["max_length_bytes"]
    queue_id = queue["id"]
    count, total = tx.conn.execute(sql.SELECT_READY_COUNTS, (queue_id,)).fetchone()
    if _within(max_len, max_bytes, count, total):
        return
    # Without a byte limit the number to drop is known; with one, walk the head.
    limit = count - max_len if max_bytes is None and max_len is not None else count
    victims = []
    for entry_id, size in tx.conn.execute(sql.SELECT_HEAD, (queue_id, limit)):
        if _within(max_len, max_bytes, count, total):
            break
        victims.append(entry_id)
        count -= 1
        total -= size or 0
    if victims:
        dead_letter(tx, queue, victims, "maxlen", depth=depth)


# --- dead-lettering ------------------------------------------------------------------------


def dead_letter(
    tx: Txn, queue: Mapping[str, Any], entry_ids: Sequence[int], reason: str, depth: int = 0
) -> None:
    """Remove entries from ``queue`` and, when it has a dead-letter exchange, republish each
    through it with its ``x-death`` history, in this transaction: the message is in the
    source or in the targets, never both, never neither. ``reason``: rejected, expired,
    maxlen or delivery_limit."""
    if not entry_ids:
        return
    messages = []
    if queue["dead_letter_exchange"] is not None:
        for entry_id in entry_ids:
            row = tx.conn.execute(sql.SELECT_ENTRY_MESSAGE, (entry_id,)).fetchone()
            if row is not None:
                messages.append(row)
    # The entries go first: whatever the copies trigger (a full target dropping its head,
    # an expiry sweep) never sees them again, so none is dead-lettered twice.
    tx.conn.execute(sql.DELETE_ENTRIES, (json.dumps(list(entry_ids)),))
    counter = "dead_lettered" if messages else "dropped_" + reason
    tx.conn.execute(sql.INCREMENT_COUNTER, (counter, len(entry_ids)))
    for exchange, routing_key, properties, body in messages:
        fields = codec.decode_properties(properties) if properties else {}
        message = (exchange, routing_key, properties, body, None)
        _dead_letter_copy(tx, queue, message, fields, reason, depth)


def _dead_letter_copy(
    tx: Txn,
    queue: Mapping[str, Any],
    message: tuple[str, str, str | None, bytes, bytes | None],
    fields: dict[str, Any],
    reason: str,
    depth: int,
) -> None:
    """Publish the dead-lettered copy of ``message`` (from ``queue``) through the queue's
    dead-letter exchange. A missing exchange, no route or a cycle drops it."""
    if depth >= MAX_DEAD_LETTER_DEPTH:
        log.warning("dead-lettering from %s nested too deep: message dropped", queue["name"])
        tx.conn.execute(sql.INCREMENT_COUNTER, ("dead_letter_dropped", 1))
        return
    exchange, routing_key, _, body, _ = message
    dlx = queue["dead_letter_exchange"]
    dlrk = queue["arguments"].get("x-dead-letter-routing-key")
    new_fields = death_properties(
        fields, queue["name"], reason, exchange, routing_key, dlrk, tx.wall_ms
    )
    headers = new_fields["headers"]
    new_key = routing_key if dlrk is None else dlrk
    targets: dict[int, Target] = {}
    if dlx == "":
        row = tx.conn.execute(sql.ROUTE_DEFAULT, (new_key,)).fetchone()
        if row:
            targets = {row[0]: row[1:]}
    else:
        row = tx.conn.execute(sql.SELECT_EXCHANGE, (dlx,)).fetchone()
        if row is not None:  # dead-lettering may go through an internal exchange
            targets = _route_from(tx, dlx, row[1], row[5], new_key, headers)
    if reason != "rejected" and targets:
        # RabbitMQ's cycle rule: drop the copy for a queue it already died in, unless a
        # rejection (a consumer's decision) happened since.
        deaths = headers["x-death"]
        for queue_id in list(targets):
            name = tx.conn.execute(sql.SELECT_QUEUE_NAME, (queue_id,)).fetchone()[0]
            if _is_cycle(name, deaths):
                del targets[queue_id]
                log.warning("dead-letter cycle through %r: message dropped", name)
                tx.conn.execute(sql.INCREMENT_COUNTER, ("dead_letter_cycles", 1))
    if not targets:
        tx.conn.execute(sql.INCREMENT_COUNTER, ("dead_letter_dropped", 1))
        return
    priority = new_fields.get("priority") or 0
    new_message = (dlx, new_key, codec.encode_properties(new_fields), body, None)
    _store(tx, targets, new_message, priority, None, new_fields, depth + 1)


def death_properties(
    fields: Mapping[str, Any],
    queue: str,
    reason: str,
    exchange: str,
    routing_key: str,
    dead_letter_routing_key: str | None,
    wall_ms: int,
) -> dict[str, Any]:
    """The properties of a dead-lettered copy, as RabbitMQ writes them (docs/dlx.md): an
    ``x-death`` entry per (queue, reason), most recent first, its ``count`` incremented on
    a repeat; ``x-first-death-*`` set once, ``x-last-death-*`` every time; ``expiration``
    removed (kept as the entry's ``original-expiration``); ``CC`` removed when a dead-letter
    routing key replaces the routing keys; ``BCC`` removed."""
    new = dict(fields)
    headers = dict(new.get("headers") or {})
    cc = headers.get("CC")
    routing_keys = [routing_key] + (
        [k for k in cc if isinstance(k, str)] if isinstance(cc, list) else []
    )
    old = headers.get("x-death")
    deaths = [d for d in old if isinstance(d, dict)] if isinstance(old, list) else []
    for i, death in enumerate(deaths):
        if death.get("queue") == queue and death.get("reason") == reason:
            entry = dict(deaths.pop(i))
            count = entry.get("count")
            entry["count"] = (count if isinstance(count, int) else 0) + 1
            break
    else:
        entry = {"count": 1, "exchange": exchange}
        expiration = new.get("expiration")
        if expiration is not None:
            entry["original-expiration"] = expiration
        entry.update(
            {
                "queue": queue,
                "reason": reason,
                "routing-keys": routing_keys,
                "time": datetime.fromtimestamp(wall_ms // 1000, UTC),
            }
        )
    if not deaths and old is None:
        headers["x-first-death-exchange"] = exchange
        headers["x-first-death-queue"] = queue
        headers["x-first-death-reason"] = reason
    headers["x-last-death-exchange"] = exchange
    headers["x-last-death-queue"] = queue
    headers["x-last-death-reason"] = reason
    headers["x-death"] = [entry, *deaths]
    if dead_letter_routing_key is not None:
        headers.pop("CC", None)
    headers.pop("BCC", None)
    new["headers"] = headers
    new.pop("expiration", None)
    return new


def _is_cycle(queue: str, deaths: Sequence[Mapping[str, Any]]) -> bool:
    """RabbitMQ's rabbit_dead_letter:is_cycle: the queue died before, and every death since
    (including that one) was automatic (no ``rejected``)."""
    for death in deaths:
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == queue:
            return True
    return False


def expire_entries(tx: Txn, *, depth: int = 0) -> int:
    """Dead-letter (or drop) ready entries past their TTL, up to EXPIRY_BATCH of them; found
    through ix_mq_entries_expiry, so nothing is read when nothing is due."""
    rows = tx.conn.execute(sql.SELECT_EXPIRED, (tx.wall_ms, EXPIRY_BATCH)).fetchall()
    if not rows:
        return 0
    by_queue: dict[int, list[int]] = {}
    for entry_id, queue_id in rows:
        by_queue.setdefault(queue_id, []).append(entry_id)
    for queue_id, entry_ids in by_queue.items():
        queue = _queue_by_id(tx, queue_id)
        if queue is not None:
            dead_letter(tx, queue, entry_ids, "expired", depth=depth)
    return len(rows)


def expire_queues(tx: Txn) -> int:
    """Delete queues unused past their x-expires deadline (ix_mq_queues_expiry)."""
    rows = tx.conn.execute(sql.SELECT_EXPIRED_QUEUES, (tx.wall_ms, EXPIRY_BATCH)).fetchall()
    for (queue_id,) in rows:
        _drop_queue(tx, queue_id)
    if rows:
        tx.conn.execute(sql.INCREMENT_COUNTER, ("queues_expired", len(rows)))
    return len(rows)


def sweep(tx: Txn) -> int:
    """The upkeep thread's expiry sweep: message TTLs, then queue TTLs. Returns the larger
    count, so the caller sweeps again while a batch came back full."""
    return max(promote_due(tx), expire_entries(tx), expire_queues(tx), expire_dedup(tx))


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
    # The channel's consumers this lease is for: (consumer row id, x-priority, room). With
    # them the result is ``(messages, allowed)``: single active consumer and consumer
    # priorities may allow only some of them (``limit`` is then their rooms' sum).
    consumers: tuple[tuple[int, int, int], ...] = ()


def lease(
    tx: Txn, session: int, requests: Sequence[LeaseRequest]
) -> list[list[LeasedMessage] | None]:
    """Lease messages for several consumers in one transaction. A result is None when the
    queue no longer exists (its consumer is cancelled)."""
    requeue_expired(tx)
    promote_due(tx)
    expire_entries(tx)
    results: list[list[LeasedMessage] | None] = []
    for request in requests:
        queue = _queue_row(tx, request.queue)
        if queue is None:
            results.append(None)
            continue
        if not request.consumers:
            results.append(_lease_one(tx, session, queue, request))
            continue
        allowed = _allowed_consumers(tx, queue, request.consumers)
        limit = sum(room for cid, _, room in request.consumers if cid in allowed)
        leased = _lease_one(tx, session, queue, replace(request, limit=limit)) if limit else []
        results.append((leased, allowed))
    return results


def _allowed_consumers(
    tx: Txn, queue: Mapping[str, Any], consumers: Sequence[tuple[int, int, int]]
) -> set[int]:
    """Which of a channel's consumers of ``queue`` may take messages now: with
    x-single-active-consumer only the queue's active (oldest) consumer, in any process;
    otherwise those of the highest x-priority among every consumer with capacity."""
    if queue["arguments"].get("x-single-active-consumer") is True:
        row = tx.conn.execute(sql.SELECT_ACTIVE_CONSUMER, (queue["id"],)).fetchone()
        return {row[0]} & {cid for cid, _, _ in consumers} if row else set()
    top = max(priority for _, priority, _ in consumers)
    if tx.conn.execute(sql.HIGHER_PRIORITY_CONSUMER, (queue["id"], top)).fetchone():
        return set()
    return {cid for cid, priority, _ in consumers if priority == top}


def set_consumer_blocked(tx: Txn, consumer_id: int, blocked: bool) -> None:
    """A consumer with an x-priority filled (or freed) its prefetch window: lower-priority
    consumers may (or may no longer) take messages; wake them when it filled."""
    row = tx.conn.execute(sql.SET_CONSUMER_BLOCKED, (int(blocked), consumer_id)).fetchone()
    if row is not None and blocked:
        tx.touched.add(row[0])


def get(tx: Txn, session: int, request: LeaseRequest) -> list[LeasedMessage]:
    """basic_get: lease (or take, with auto_ack) the head of one queue; 404/405 as consume."""
    requeue_expired(tx)
    promote_due(tx)
    expire_entries(tx)
    queue = _accessible_queue(tx, session, request.queue)
    _touch_queue(tx, queue)
    return _lease_one(tx, session, queue, request)


def _lease_one(
    tx: Txn, session: int, queue: dict[str, Any], request: LeaseRequest
) -> list[LeasedMessage]:
    conn = tx.conn
    rows = conn.execute(sql.SELECT_READY, (queue["id"], tx.wall_ms, request.limit)).fetchall()
    if not rows:
        return []
    ids = json.dumps([r[0] for r in rows])
    token = 0
    vt = 0
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
            leased_at_ms=tx.now_ms,
            lease_ms=vt,
        )
        for entry_id, delivered, exchange, routing_key, props, body, amqp_props in rows
    ]


def ack(
    tx: Txn, leases: Iterable[tuple[int, int]], *, missing_ok: bool = False
) -> list[tuple[int, int]]:
    """Delete acknowledged entries; returns the (entry, token) pairs whose lease was lost.

    With ``missing_ok`` (an ack of a lease known to be still valid), an entry that is gone
    altogether went with its deleted queue: that is accepted, as RabbitMQ does; only an entry
    now leased under another token is a lost lease."""
    pairs = list(leases)
    if len(pairs) > 1:
        # One statement for all of them (a consumer acks a prefetch window at a time).
        rows = tx.conn.execute(sql.ACK_ENTRIES, (json.dumps(pairs),)).fetchall()
        if len(rows) == len(pairs):
            return []
        deleted = {row[0] for row in rows}
        pairs = [pair for pair in pairs if pair[0] not in deleted]
    stale = []
    for pair in pairs:
        if tx.conn.execute(sql.ACK_ENTRY, pair).rowcount != 1:
            if missing_ok and tx.conn.execute(sql.ENTRY_EXISTS, (pair[0],)).fetchone() is None:
                continue
            stale.append(pair)
    return stale


def release(tx: Txn, leases: Iterable[tuple[int, int]], *, requeue: bool) -> list[tuple[int, int]]:
    """Nack/reject: requeue (keeping the message's place) or drop (dead-letter, reason
    rejected, when the queue has a dead-letter exchange); returns the lost leases."""
    stale = []
    if not requeue:
        rejected: dict[int, list[int]] = {}
        for pair in leases:
            if tx.conn.execute(sql.REJECT_ENTRY, pair).rowcount == 1:
                continue
            row = tx.conn.execute(sql.SELECT_LEASED_QUEUE, pair).fetchone()
            if row is None:
                stale.append(pair)
            else:
                rejected.setdefault(row[0], []).append(pair[0])
        _dead_letter_by_queue(tx, rejected, "rejected")
        return stale
    returned = []
    for pair in leases:
        row = tx.conn.execute(sql.REQUEUE_ENTRY, pair).fetchone()
        if row is None:
            stale.append(pair)
        else:
            returned.append(row)
    _returned(tx, returned)
    return stale


def _returned(tx: Txn, rows: Sequence[tuple[int, int, Any, Any]]) -> int:
    """Entries came back to their queues (nack/reject with requeue, a lapsed lease, a dead
    or closed owner): wake their consumers, dead-letter those that exceeded their queue's
    x-delivery-limit (every return counts, as in quorum queues), and bring a full drop-head
    queue back within its length limit (the returned message is back at its head)."""
    poison: dict[int, list[int]] = {}
    limited: set[int] = set()
    for queue_id, entry_id, over_limit, counted in rows:
        tx.touched.add(queue_id)
        if over_limit:
            poison.setdefault(queue_id, []).append(entry_id)
        if counted:
            limited.add(queue_id)
    _dead_letter_by_queue(tx, poison, "delivery_limit")
    for queue_id in limited:
        queue = _queue_by_id(tx, queue_id)
        if queue is not None and queue["arguments"].get("x-overflow", "drop-head") == "drop-head":
            _drop_head(tx, queue, 0)
    return len(rows)


def _dead_letter_by_queue(tx: Txn, entries: Mapping[int, list[int]], reason: str) -> None:
    for queue_id, entry_ids in entries.items():
        queue = _queue_by_id(tx, queue_id)
        if queue is not None:
            dead_letter(tx, queue, entry_ids, reason)


def requeue_owner(tx: Txn, session: int) -> int:
    return _returned(tx, tx.conn.execute(sql.REQUEUE_OWNER, (session,)).fetchall())


def requeue_expired(tx: Txn) -> int:
    if tx.conn.execute(sql.ANY_LEASE_EXPIRED, (tx.now_ms,)).fetchone() is None:
        return 0
    return _returned(tx, tx.conn.execute(sql.REQUEUE_EXPIRED, (tx.now_ms,)).fetchall())


def renew(tx: Txn, sessions: Mapping[int, int]) -> None:
    """Heartbeat each live session and extend its leases (session -> default lease ms)."""
    for session, default_vt in sessions.items():
        tx.conn.execute(sql.HEARTBEAT_SESSION, (tx.now_ms, session))
        tx.conn.execute(sql.RENEW_OWNER, (tx.now_ms, default_vt, session, tx.now_ms, tx.now_ms))


# --- consumers and sessions ---------------------------------------------------------------


def add_consumer(
    tx: Txn, session: int, queue: str, tag: str, *, exclusive: bool, priority: int = 0
) -> int:
    """Register a consumer (for consumer_count, exclusivity and auto-delete); returns its id."""
    target = _accessible_queue(tx, session, queue)
    in_exclusive_use = tx.conn.execute(sql.SELECT_EXCLUSIVE_CONSUMER, (target["id"],)).fetchone()
    if in_exclusive_use or (exclusive and _counts(tx, target["id"])[1]):
        raise errors.AccessRefusedError(
            f"ACCESS_REFUSED - {core.queue_desc(queue)} in exclusive use"
        )
    if priority:
        row = tx.conn.execute(
            sql.INSERT_CONSUMER_PRIORITY, (session, target["id"], tag, exclusive, priority)
        )
    else:
        row = tx.conn.execute(sql.INSERT_CONSUMER, (session, target["id"], tag, exclusive))
    if target["expires_ms"] is not None:
        tx.conn.execute(sql.PARK_QUEUE_EXPIRY, (target["id"],))
    return int(row.fetchone()[0])


def remove_consumer(tx: Txn, consumer_id: int) -> None:
    """Unregister a consumer; an auto-delete queue goes with its last consumer."""
    row = tx.conn.execute(sql.DELETE_CONSUMER, (consumer_id,)).fetchone()
    if row is None:
        return
    queue_id = row[0]
    # Single active consumer fails over, priorities shift: wake the queue's other consumers.
    tx.touched.add(queue_id)
    deleted = tx.conn.execute(sql.DELETE_QUEUE_IF_UNUSED_AUTO_DELETE, (queue_id, queue_id))
    if deleted.rowcount:
        tx.topology_changed()
    if deleted.rowcount:
        # The queue is gone; its bindings went with it (ON DELETE CASCADE).
        tx.queues_deleted = True
    else:
        # x-expires counts unused time from when the last consumer left.
        tx.conn.execute(sql.TOUCH_QUEUE, (tx.wall_ms, queue_id))


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
    _returned(tx, tx.conn.execute(sql.VOID_ALL_LEASES).fetchall())


def get_meta(tx: Txn, key: str) -> str | None:
    row = tx.conn.execute(sql.SELECT_META, (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(tx: Txn, key: str, value: str) -> None:
    tx.conn.execute(sql.UPSERT_META, (key, value))


def counters(tx: Txn) -> dict[str, int]:
    return dict(tx.conn.execute(sql.SELECT_COUNTERS).fetchall())


# --- deduplication (x-deduplication-window) -------------------------------------------------


def _publish_deduplicated(
    tx: Txn,
    targets: Mapping[int, Target],
    message: tuple[str, str, str | None, bytes, bytes | None],
    priority: int,
    expiration: int | None,
    message_id: str,
    deliver_at: int | None,
) -> int | Refused:
    """Publish a message that has a ``message_id``: each target queue with a deduplication
    window that accepted this id within its window drops it silently (counted as
    ``deduplicated``); the others store (or schedule) it as usual and remember the id."""
    windows = {
        queue_id: (name, window)
        for queue_id, name, window in tx.conn.execute(
            sql.SELECT_DEDUP_WINDOWS, (json.dumps(list(targets)),)
        )
    }
    duplicates = {
        queue_id
        for queue_id in windows
        if tx.conn.execute(sql.SEEN_MESSAGE_ID, (queue_id, message_id, tx.wall_ms)).fetchone()
    }
    if duplicates:
        tx.conn.execute(sql.INCREMENT_COUNTER, ("deduplicated", len(duplicates)))
    remaining = {q: t for q, t in targets.items() if q not in duplicates}
    routed, refused = 0, []
    if remaining and deliver_at is not None:
        result: Any = _schedule(tx, remaining, message, priority, expiration, deliver_at)
        if isinstance(result, Refused):
            routed, refused = result.routed, list(result.queues)
        else:
            routed = int(result)
    elif remaining:
        routed, refused = _store(tx, remaining, message, priority, expiration, None, 0)
    accepted = [
        (queue_id, message_id, tx.wall_ms, tx.wall_ms + window)
        for queue_id, (name, window) in windows.items()
        if queue_id not in duplicates and name not in refused
    ]
    if accepted:
        tx.conn.executemany(sql.REMEMBER_MESSAGE_ID, accepted)
    # A dropped duplicate counts as routed (no basic.return, a confirm ack), as with
    # RabbitMQ's message-deduplication plugin.
    if refused:
        return Refused(routed + len(duplicates), tuple(refused))
    return routed + len(duplicates)


def expire_dedup(tx: Txn) -> int:
    """Forget message ids whose deduplication window has passed (ix_mq_dedup_expires_at_ms)."""
    return int(tx.conn.execute(sql.EXPIRE_DEDUP, (tx.wall_ms, EXPIRY_BATCH)).rowcount)
