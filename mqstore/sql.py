"""Every statement the store runs, written once as SQL with named or positional parameters.

Hot statements (publish, lease, ack) are single statements over the indexes named in their
comments; tests/unit/test_sql_plans.py checks those plans with EXPLAIN QUERY PLAN.
"""

import functools

# --- exchanges ----------------------------------------------------------------------------
SELECT_EXCHANGE = (
    "SELECT name, type, durable, auto_delete, internal, arguments FROM mq_exchanges WHERE name = ?"
)
INSERT_EXCHANGE = (
    "INSERT INTO mq_exchanges (name, type, durable, auto_delete, internal, arguments, "
    "created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
INSERT_EXCHANGE_IF_MISSING = INSERT_EXCHANGE.replace("INSERT INTO", "INSERT OR IGNORE INTO")
DELETE_EXCHANGE = "DELETE FROM mq_exchanges WHERE name = ?"
EXCHANGE_HAS_BINDINGS = (
    "SELECT 1 FROM mq_bindings WHERE exchange = ?1 "
    "UNION ALL SELECT 1 FROM mq_exchange_bindings WHERE source = ?1 LIMIT 1"
)
# Auto-delete exchanges lose their last binding: delete them (uses ix_mq_bindings_exchange_*).
DELETE_UNUSED_AUTO_DELETE_EXCHANGE = (
    "DELETE FROM mq_exchanges WHERE name = ? AND auto_delete "
    "AND NOT EXISTS (SELECT 1 FROM mq_bindings WHERE exchange = ?) "
    "AND NOT EXISTS (SELECT 1 FROM mq_exchange_bindings WHERE source = mq_exchanges.name)"
)

# --- queues -------------------------------------------------------------------------------
_QUEUE_COLUMNS = (
    "id, name, durable, exclusive_owner, auto_delete, arguments, visibility_timeout_ms, "
    "consumer_timeout_ms, max_priority, message_ttl_ms, max_length, max_length_bytes, "
    "dead_letter_exchange, delivery_limit, expires_ms, expires_at_ms"
)
SELECT_QUEUE = f"SELECT {_QUEUE_COLUMNS} FROM mq_queues WHERE name = ?"
SELECT_QUEUE_BY_ID = f"SELECT {_QUEUE_COLUMNS} FROM mq_queues WHERE id = ?"
INSERT_QUEUE = (
    "INSERT INTO mq_queues (name, durable, exclusive_owner, auto_delete, arguments, "
    "visibility_timeout_ms, consumer_timeout_ms, max_priority, created_at_ms, "
    "message_ttl_ms, max_length, max_length_bytes, dead_letter_exchange, delivery_limit, "
    "expires_ms, expires_at_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
)
# x-expires: a use of the queue (redeclare, basic.get, its last consumer leaving) restarts
# its timer; a queue with consumers stays out of the expiry index (PARK_QUEUE_EXPIRY).
TOUCH_QUEUE = (
    "UPDATE mq_queues SET expires_at_ms = ?1 + expires_ms WHERE id = ?2 "
    "AND expires_ms IS NOT NULL AND NOT EXISTS (SELECT 1 FROM mq_consumers c "
    "WHERE c.queue_id = ?2)"
)
# A queue with a consumer is in use: out of the expiry index until its last consumer leaves.
PARK_QUEUE_EXPIRY = (
    "UPDATE mq_queues SET expires_at_ms = NULL WHERE id = ? AND expires_ms IS NOT NULL"
)
# Unused queues past their x-expires deadline (ix_mq_queues_expiry).
SELECT_EXPIRED_QUEUES = (
    "SELECT id FROM mq_queues INDEXED BY ix_mq_queues_expiry "
    "WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ? "
    "AND NOT EXISTS (SELECT 1 FROM mq_consumers c WHERE c.queue_id = mq_queues.id) LIMIT ?"
)
DELETE_QUEUE = "DELETE FROM mq_queues WHERE id = ?"
# Ready messages (RabbitMQ's message_count excludes unacked ones): ix_mq_entries_ready.
COUNT_READY = (
    "SELECT count(*) FROM mq_entries INDEXED BY ix_mq_entries_ready "
    "WHERE queue_id = ? AND lease_token IS NULL"
)
COUNT_CONSUMERS = "SELECT count(*) FROM mq_consumers WHERE queue_id = ?"
PURGE_READY = (
    "DELETE FROM mq_entries INDEXED BY ix_mq_entries_ready "
    "WHERE queue_id = ? AND lease_token IS NULL"
)
SELECT_QUEUE_EXCHANGES = "SELECT DISTINCT exchange FROM mq_bindings WHERE queue_id = ?"
SELECT_EXCLUSIVE_QUEUES = "SELECT id FROM mq_queues WHERE exclusive_owner = ?"

# --- bindings -----------------------------------------------------------------------------
INSERT_BINDING = (
    "INSERT OR IGNORE INTO mq_bindings (exchange, queue_id, routing_key, arguments) "
    "VALUES (?, ?, ?, ?)"
)
DELETE_BINDING = (
    "DELETE FROM mq_bindings WHERE exchange = ? AND queue_id = ? AND routing_key = ? "
    "AND arguments = ?"
)

# --- exchange-to-exchange bindings ---------------------------------------------------------
INSERT_EXCHANGE_BINDING = (
    "INSERT OR IGNORE INTO mq_exchange_bindings (source, destination, routing_key, arguments) "
    "VALUES (?, ?, ?, ?)"
)
DELETE_EXCHANGE_BINDING = (
    "DELETE FROM mq_exchange_bindings WHERE source = ? AND destination = ? "
    "AND routing_key = ? AND arguments = ?"
)
# The exchanges a publish to this one goes on to (the unique index's source prefix).
ROUTE_EXCHANGES = (
    "SELECT b.destination, e.type, b.routing_key, b.arguments, e.arguments "
    "FROM mq_exchange_bindings b "
    "JOIN mq_exchanges e ON e.name = b.destination WHERE b.source = ?"
)

# --- routing (publish) --------------------------------------------------------------------
# Each route statement returns, per target queue, what a publish needs to store an entry:
# id, max_priority, message_ttl_ms, max_length, max_length_bytes (NULL: feature off).
# Default exchange: the queue named by the routing key (sqlite_autoindex on name).
ROUTE_DEFAULT = (
    "SELECT id, max_priority, message_ttl_ms, max_length, max_length_bytes "
    "FROM mq_queues WHERE name = ?"
)
# Direct: bindings with exactly this key (the unique index on exchange, routing_key, ...).
ROUTE_DIRECT = (
    "SELECT DISTINCT b.queue_id, q.max_priority, q.message_ttl_ms, q.max_length, "
    "q.max_length_bytes FROM mq_bindings b "
    "JOIN mq_queues q ON q.id = b.queue_id WHERE b.exchange = ? AND b.routing_key = ?"
)
# Fanout, topic, headers: every binding of the exchange, matched in Python.
ROUTE_ALL = (
    "SELECT b.queue_id, q.max_priority, q.message_ttl_ms, q.max_length, q.max_length_bytes, "
    "b.routing_key, b.arguments FROM mq_bindings b "
    "JOIN mq_queues q ON q.id = b.queue_id WHERE b.exchange = ?"
)
# The queues a dead-lettered message reached, by name (cycle detection).
SELECT_QUEUE_NAME = "SELECT name FROM mq_queues WHERE id = ?"
# A message routed to several queues is stored once, here, and shared by its entries.
INSERT_MESSAGE = (
    "INSERT INTO mq_messages (exchange, routing_key, properties, body, published_at_ms, "
    "amqp_properties) VALUES (?, ?, ?, ?, ?, ?)"
)
# An entry: (queue_id, priority, expires_at_ms, size, lease_token, deliver_at_ms, ...).
# expires_at_ms set: it expires (x-message-ttl, expiration; enters ix_mq_entries_expiry).
# size set: its queue has a length limit (the mq_entries_count_* triggers count it).
# lease_token SCHEDULED with deliver_at_ms: a delayed message (see PROMOTE_DUE).
_ENTRY_COLUMNS = "queue_id, priority, expires_at_ms, size, lease_token, deliver_at_ms"
# ... followed by the message itself when it went to one queue only (one row per publish),
INSERT_ENTRY_INLINE = (
    f"INSERT INTO mq_entries ({_ENTRY_COLUMNS}, exchange, routing_key, properties, body, "
    "published_at_ms, amqp_properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# ... or by the id of the shared message in mq_messages.
INSERT_ENTRY_SHARED = (
    f"INSERT INTO mq_entries ({_ENTRY_COLUMNS}, message_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# The common publish in one statement: to the default exchange (routed by queue name), into
# a queue with no TTL, length limit or deduplication window, inline. No row inserted: the
# queue is missing or has a feature, and the publish takes the general path. (No RETURNING:
# it costs as much again as the insert.)
_PUBLISH_DEFAULT_PLAIN = (
    "INSERT INTO mq_entries (queue_id, priority, exchange, routing_key, properties, body, "
    "published_at_ms, amqp_properties) "
    "SELECT id, CASE WHEN max_priority THEN min(?2, max_priority) ELSE 0 END, '', name, "
    "?3, ?4, ?5, ?6 FROM mq_queues WHERE {} AND message_ttl_ms IS NULL "
    "AND max_length IS NULL AND max_length_bytes IS NULL AND dedup_window_ms IS NULL"
)
PUBLISH_DEFAULT_PLAIN = _PUBLISH_DEFAULT_PLAIN.format("name = ?1")
# The same with the queue's id as remembered from an earlier publish (?7): a rowid lookup
# instead of a search of the name index, ~2 us less. The name and the conditions are still
# checked, so a queue deleted (its id given to another) or changed stores nothing here.
PUBLISH_DEFAULT_PLAIN_BY_ID = _PUBLISH_DEFAULT_PLAIN.format("id = ?7 AND name = ?1")
# The same for a message with a body only (no properties, priority 0): four values to bind
# instead of seven (Python's sqlite3 binds ~0.3 us per value).
PUBLISH_DEFAULT_BARE_BY_ID = (
    "INSERT INTO mq_entries (queue_id, priority, exchange, routing_key, body, published_at_ms) "
    "SELECT id, 0, '', name, ?2, ?3 FROM mq_queues WHERE id = ?4 AND name = ?1 "
    "AND message_ttl_ms IS NULL AND max_length IS NULL AND max_length_bytes IS NULL "
    "AND dedup_window_ms IS NULL"
)
QUEUE_ID_BY_NAME = "SELECT id FROM mq_queues WHERE name = ?"
# ``rows`` messages with one queue, priority, exchange, routing key, properties and
# publish time, inline, in one statement (basic_publish_batch): the shared values are bound
# once (?1-?7) and each body once, where executemany would bind all twelve columns per row
# (Python's sqlite3 binds ~0.5 us per value: 3.5 us a row here against 10.8 us). Built for
# a few sizes only (powers of two), so the statement cache holds every shape.
INLINE_BATCH_SIZES = (128, 64, 32, 16, 8, 4, 2, 1)


@functools.lru_cache(maxsize=len(INLINE_BATCH_SIZES))
def insert_inline_batch(rows: int) -> str:
    values = ", ".join(f"(?1, ?2, ?3, ?4, ?5, ?{8 + i}, ?6, ?7)" for i in range(rows))
    return (
        "INSERT INTO mq_entries (queue_id, priority, exchange, routing_key, properties, body, "
        f"published_at_ms, amqp_properties) VALUES {values}"
    )


# ``rows`` whole inline entries in one statement (publish_many: the publishes of a group
# commit or a transaction), eight values each: one step, where executemany steps (and
# releases the GIL to every waiting thread) once per row.
INLINE_ROW_COLUMNS = (
    "queue_id, priority, exchange, routing_key, properties, body, published_at_ms, amqp_properties"
)


@functools.lru_cache(maxsize=len(INLINE_BATCH_SIZES))
def insert_inline_rows(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO mq_entries ({INLINE_ROW_COLUMNS}) VALUES {values}"


# An entry's message, inline or shared: for an inline entry the mq_messages columns are NULL
# (no row joins), for a shared one the entry's own are; coalesce picks whichever is set.
_MESSAGE_COLUMNS = (
    "coalesce(e.exchange, m.exchange), coalesce(e.routing_key, m.routing_key), "
    "coalesce(e.properties, m.properties), coalesce(e.body, m.body)"
)
_JOIN_MESSAGE = "LEFT JOIN mq_messages m ON m.id = e.message_id"

# --- length limits (x-max-length, x-max-length-bytes) --------------------------------------
# Ready messages and bytes of a limited queue, kept by triggers (primary key): x-max-length
# counts ready messages only, as RabbitMQ does.
SELECT_READY_COUNTS = "SELECT ready_count, ready_bytes FROM mq_queues WHERE id = ?"
# A ready entry of ``size`` bytes was inserted into a limited queue (store.insert_message).
COUNT_READY_ENTRY = (
    "UPDATE mq_queues SET ready_count = ready_count + 1, ready_bytes = ready_bytes + ? WHERE id = ?"
)
# The head of a queue, in delivery order, with sizes (drop-head; ix_mq_entries_ready).
SELECT_HEAD = (
    "SELECT id, size FROM mq_entries INDEXED BY ix_mq_entries_ready "
    "WHERE queue_id = ? AND lease_token IS NULL ORDER BY priority DESC, id LIMIT ?"
)

# --- expiry and dead-lettering ---------------------------------------------------------------
# Ready entries past their TTL, oldest deadline first (ix_mq_entries_expiry).
SELECT_EXPIRED = (
    "SELECT id, queue_id FROM mq_entries INDEXED BY ix_mq_entries_expiry "
    "WHERE expires_at_ms IS NOT NULL AND lease_token IS NULL AND expires_at_ms <= ? "
    "ORDER BY expires_at_ms LIMIT ?"
)
# The message of an entry, to dead-letter it (primary keys).
SELECT_ENTRY_MESSAGE = f"SELECT {_MESSAGE_COLUMNS} FROM mq_entries e {_JOIN_MESSAGE} WHERE e.id = ?"
# Reject/nack without requeue on a queue with no dead-letter exchange: delete (primary key).
REJECT_ENTRY = (
    "DELETE FROM mq_entries WHERE id = ? AND lease_token = ? AND (SELECT dead_letter_exchange "
    "FROM mq_queues q WHERE q.id = mq_entries.queue_id) IS NULL"
)
# Otherwise: the lease is still held, and the entry's queue is to dead-letter it.
SELECT_LEASED_QUEUE = "SELECT queue_id FROM mq_entries WHERE id = ? AND lease_token = ?"

# --- leasing ------------------------------------------------------------------------------
# The head of a queue: ready entries in priority then FIFO order (ix_mq_entries_ready).
SELECT_READY = (
    f"SELECT e.id, e.delivery_count, {_MESSAGE_COLUMNS}, "
    "coalesce(e.amqp_properties, m.amqp_properties) "
    f"FROM mq_entries e INDEXED BY ix_mq_entries_ready {_JOIN_MESSAGE} "
    "WHERE e.queue_id = ? AND e.lease_token IS NULL "
    "AND (e.expires_at_ms IS NULL OR e.expires_at_ms > ?) "
    "ORDER BY e.priority DESC, e.id LIMIT ?"
)
LEASE_ENTRIES = (
    "UPDATE mq_entries SET lease_token = ?, lease_owner = ?, leased_at_ms = ?, "
    "lease_expires_at_ms = ?, delivery_count = delivery_count + 1 "
    "WHERE id IN (SELECT value FROM json_each(?))"
)
DELETE_ENTRIES = "DELETE FROM mq_entries WHERE id IN (SELECT value FROM json_each(?))"
# Ack: only the holder of the current lease token may delete (fencing), by primary key.
ACK_ENTRY = "DELETE FROM mq_entries WHERE id = ? AND lease_token = ?"
# Many acks in one statement: [[entry, token], ...] as JSON; returns the entries deleted,
# so the pairs missing from the answer are the lost leases (looked at one by one).
ACK_ENTRIES = (
    "DELETE FROM mq_entries WHERE id IN (SELECT e.id FROM json_each(?) j "
    "JOIN mq_entries e ON e.id = json_extract(j.value, '$[0]') "
    "AND e.lease_token = json_extract(j.value, '$[1]')) RETURNING id"
)
ENTRY_EXISTS = "SELECT 1 FROM mq_entries WHERE id = ?"
# Requeue: clear the lease, keep the id so the message keeps its place in the queue. Every
# requeue returns (queue, entry, over its queue's x-delivery-limit? (a NULL limit is never
# exceeded), in a queue with a length limit? (only those entries have a size)).
_RETURNING_OVER_LIMIT = (
    "RETURNING queue_id, id, delivery_count > (SELECT delivery_limit FROM mq_queues q "
    "WHERE q.id = mq_entries.queue_id), size IS NOT NULL"
)
REQUEUE_ENTRY = (
    "UPDATE mq_entries SET lease_token = NULL, lease_owner = NULL, leased_at_ms = NULL, "
    "lease_expires_at_ms = NULL WHERE id = ? AND lease_token = ? " + _RETURNING_OVER_LIMIT
)
# A closed or dead connection's leases (ix_mq_entries_lease_owner).
REQUEUE_OWNER = (
    "UPDATE mq_entries SET lease_token = NULL, lease_owner = NULL, leased_at_ms = NULL, "
    "lease_expires_at_ms = NULL WHERE lease_owner = ? AND lease_token IS NOT NULL "
    + _RETURNING_OVER_LIMIT
)
# Leases past their deadline (ix_mq_entries_lease_expiry).
REQUEUE_EXPIRED = (
    "UPDATE mq_entries SET lease_token = NULL, lease_owner = NULL, leased_at_ms = NULL, "
    "lease_expires_at_ms = NULL WHERE lease_token IS NOT NULL AND lease_expires_at_ms <= ? "
    + _RETURNING_OVER_LIMIT
)
# Whether any lease is past its deadline: an index probe, so a lease or an upkeep round pays
# for REQUEUE_EXPIRED (an UPDATE .. RETURNING, several times dearer) only when one is.
ANY_LEASE_EXPIRED = (
    "SELECT 1 FROM mq_entries INDEXED BY ix_mq_entries_lease_expiry "
    "WHERE lease_token IS NOT NULL AND lease_expires_at_ms <= ? LIMIT 1"
)
# A live owner extends its leases, unless a delivery has outlived the consumer timeout.
RENEW_OWNER = (
    "UPDATE mq_entries SET lease_expires_at_ms = ? + coalesce("
    "(SELECT visibility_timeout_ms FROM mq_queues q WHERE q.id = mq_entries.queue_id), ?) "
    "WHERE lease_owner = ? AND lease_token IS NOT NULL AND lease_expires_at_ms > ? "
    "AND leased_at_ms + (SELECT consumer_timeout_ms FROM mq_queues q "
    "WHERE q.id = mq_entries.queue_id) > ?"
)
VOID_ALL_LEASES = (
    "UPDATE mq_entries SET lease_token = NULL, lease_owner = NULL, leased_at_ms = NULL, "
    "lease_expires_at_ms = NULL WHERE lease_token IS NOT NULL AND deliver_at_ms IS NULL "
    + _RETURNING_OVER_LIMIT
)

# --- sessions and consumers ---------------------------------------------------------------
INSERT_SESSION = (
    "INSERT INTO mq_sessions (pid, process_start, boot_id, heartbeat_at_ms, created_at_ms, "
    "name) VALUES (?, ?, ?, ?, ?, ?) RETURNING id"
)
SELECT_SESSIONS = "SELECT id, pid, process_start, boot_id FROM mq_sessions"
HEARTBEAT_SESSION = "UPDATE mq_sessions SET heartbeat_at_ms = ? WHERE id = ?"
DELETE_SESSION = "DELETE FROM mq_sessions WHERE id = ?"
SELECT_SESSION_CONSUMERS = "SELECT id FROM mq_consumers WHERE session_id = ?"
INSERT_CONSUMER = (
    "INSERT INTO mq_consumers (session_id, queue_id, tag, exclusive) VALUES (?, ?, ?, ?) "
    "RETURNING id"
)
DELETE_CONSUMER = "DELETE FROM mq_consumers WHERE id = ? RETURNING queue_id"
SELECT_EXCLUSIVE_CONSUMER = "SELECT 1 FROM mq_consumers WHERE queue_id = ? AND exclusive LIMIT 1"
DELETE_QUEUE_IF_UNUSED_AUTO_DELETE = (
    "DELETE FROM mq_queues WHERE id = ? AND auto_delete "
    "AND NOT EXISTS (SELECT 1 FROM mq_consumers WHERE queue_id = ?)"
)

# --- meta and counters --------------------------------------------------------------------
SELECT_META = "SELECT value FROM mq_meta WHERE key = ?"
# Bindings or queues changed: every process's routing cache is stale (store.Txn.topology).
BUMP_TOPOLOGY = (
    "INSERT INTO mq_meta (key, value) VALUES ('topology', '1') "
    "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)
UPSERT_META = (
    "INSERT INTO mq_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
INCREMENT_COUNTER = (
    "INSERT INTO mq_counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
SELECT_COUNTERS = "SELECT name, value FROM mq_counters"

# --- deduplication (x-deduplication-window) -------------------------------------------------

SET_DEDUP_WINDOW = "UPDATE mq_queues SET dedup_window_ms = ? WHERE name = ?"
SELECT_DEDUP_WINDOWS = (
    "SELECT id, name, dedup_window_ms FROM mq_queues "
    "WHERE id IN (SELECT value FROM json_each(?)) AND dedup_window_ms IS NOT NULL"
)
SEEN_MESSAGE_ID = (
    "SELECT 1 FROM mq_dedup WHERE queue_id = ? AND message_id = ? AND expires_at_ms > ?"
)
REMEMBER_MESSAGE_ID = (
    "INSERT INTO mq_dedup (queue_id, message_id, accepted_at_ms, expires_at_ms) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (queue_id, message_id) DO UPDATE SET "
    "accepted_at_ms = excluded.accepted_at_ms, expires_at_ms = excluded.expires_at_ms"
)
EXPIRE_DEDUP = (
    "DELETE FROM mq_dedup WHERE rowid IN (SELECT rowid FROM mq_dedup "
    "WHERE expires_at_ms <= ? ORDER BY expires_at_ms LIMIT ?)"
)

# --- cross-process wake-ups ---------------------------------------------------------------
INSERT_LISTENER = (
    "INSERT OR REPLACE INTO mq_listeners (address, pid, created_at_ms) VALUES (?, ?, ?)"
)
DELETE_LISTENER = "DELETE FROM mq_listeners WHERE address = ?"
SELECT_LISTENERS = "SELECT address FROM mq_listeners"

# --- delayed delivery (x-delay, delay=) ----------------------------------------------------
# A scheduled entry holds the SCHEDULED pseudo lease token (store.SCHEDULED), so it is not
# among the ready entries of ix_mq_entries_ready (nor counted by the length-limit triggers)
# until promoted; its deliver_at_ms (wall clock) puts it in ix_mq_entries_scheduled.
# Promote due entries (ix_mq_entries_scheduled), oldest due first, in bounded batches. The
# lease-token change lets mq_entries_count_lease count them as ready.
PROMOTE_DUE = (
    "UPDATE mq_entries SET lease_token = NULL, deliver_at_ms = NULL WHERE id IN ("
    "SELECT id FROM mq_entries INDEXED BY ix_mq_entries_scheduled "
    "WHERE deliver_at_ms IS NOT NULL AND deliver_at_ms <= ? ORDER BY deliver_at_ms LIMIT ?) "
    "RETURNING queue_id, size IS NOT NULL"
)
# Whether any scheduled entry is due (the probe before PROMOTE_DUE, as ANY_LEASE_EXPIRED).
ANY_DUE = (
    "SELECT 1 FROM mq_entries INDEXED BY ix_mq_entries_scheduled "
    "WHERE deliver_at_ms IS NOT NULL AND deliver_at_ms <= ? LIMIT 1"
)
# When the next scheduled entry is due (the index's first row), or NULL.
NEXT_DUE = (
    "SELECT min(deliver_at_ms) FROM mq_entries INDEXED BY ix_mq_entries_scheduled "
    "WHERE deliver_at_ms IS NOT NULL"
)

# --- single active consumer, consumer priorities --------------------------------------------
INSERT_CONSUMER_PRIORITY = (
    "INSERT INTO mq_consumers (session_id, queue_id, tag, exclusive, priority) "
    "VALUES (?, ?, ?, ?, ?) RETURNING id"
)
# x-single-active-consumer: the queue's oldest consumer is the active one.
SELECT_ACTIVE_CONSUMER = "SELECT id FROM mq_consumers WHERE queue_id = ? ORDER BY id LIMIT 1"
# The highest priority among the queue's other consumers with capacity (ix_mq_consumers_*).
# A consumer of the queue with room (not blocked) and a higher priority than ours: the
# asking channel's own consumers never match (their priority is at most the one asked).
HIGHER_PRIORITY_CONSUMER = (
    "SELECT 1 FROM mq_consumers WHERE queue_id = ? AND NOT blocked AND priority > ? LIMIT 1"
)
SET_CONSUMER_BLOCKED = "UPDATE mq_consumers SET blocked = ? WHERE id = ? RETURNING queue_id"
