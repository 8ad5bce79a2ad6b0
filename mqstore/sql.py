"""Every statement the store runs, written once as SQL with named or positional parameters.

Hot statements (publish, lease, ack) are single statements over the indexes named in their
comments; tests/unit/test_sql_plans.py checks those plans with EXPLAIN QUERY PLAN.
"""

# --- exchanges ----------------------------------------------------------------------------
SELECT_EXCHANGE = (
    "SELECT name, type, durable, auto_delete, internal FROM mq_exchanges WHERE name = ?"
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
SELECT_QUEUE = (
    "SELECT id, name, durable, exclusive_owner, auto_delete, arguments, "
    "visibility_timeout_ms, consumer_timeout_ms, max_priority FROM mq_queues WHERE name = ?"
)
INSERT_QUEUE = (
    "INSERT INTO mq_queues (name, durable, exclusive_owner, auto_delete, arguments, "
    "visibility_timeout_ms, consumer_timeout_ms, max_priority, created_at_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
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
    "SELECT b.destination, e.type, b.routing_key, b.arguments FROM mq_exchange_bindings b "
    "JOIN mq_exchanges e ON e.name = b.destination WHERE b.source = ?"
)

# --- routing (publish) --------------------------------------------------------------------
# Default exchange: the queue named by the routing key (sqlite_autoindex on name).
ROUTE_DEFAULT = "SELECT id, max_priority FROM mq_queues WHERE name = ?"
# Direct: bindings with exactly this key (the unique index on exchange, routing_key, ...).
ROUTE_DIRECT = (
    "SELECT DISTINCT b.queue_id, q.max_priority FROM mq_bindings b "
    "JOIN mq_queues q ON q.id = b.queue_id WHERE b.exchange = ? AND b.routing_key = ?"
)
# Fanout, topic, headers: every binding of the exchange, matched in Python.
ROUTE_ALL = (
    "SELECT b.queue_id, q.max_priority, b.routing_key, b.arguments FROM mq_bindings b "
    "JOIN mq_queues q ON q.id = b.queue_id WHERE b.exchange = ?"
)
INSERT_MESSAGE = (
    "INSERT INTO mq_messages (exchange, routing_key, properties, body, published_at_ms, "
    "amqp_properties) VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_ENTRY = "INSERT INTO mq_entries (queue_id, message_id, priority) VALUES (?, ?, ?)"

# --- leasing ------------------------------------------------------------------------------
# The head of a queue: ready entries in priority then FIFO order (ix_mq_entries_ready).
SELECT_READY = (
    "SELECT e.id, e.delivery_count, m.exchange, m.routing_key, m.properties, m.body, "
    "m.amqp_properties "
    "FROM mq_entries e INDEXED BY ix_mq_entries_ready JOIN mq_messages m ON m.id = e.message_id "
    "WHERE e.queue_id = ? AND e.lease_token IS NULL ORDER BY e.priority DESC, e.id LIMIT ?"
)
LEASE_ENTRIES = (
    "UPDATE mq_entries SET lease_token = ?, lease_owner = ?, leased_at_ms = ?, "
    "lease_expires_at_ms = ?, delivery_count = delivery_count + 1 "
    "WHERE id IN (SELECT value FROM json_each(?))"
)
DELETE_ENTRIES = "DELETE FROM mq_entries WHERE id IN (SELECT value FROM json_each(?))"
# Ack: only the holder of the current lease token may delete (fencing), by primary key.
ACK_ENTRY = "DELETE FROM mq_entries WHERE id = ? AND lease_token = ?"
# Requeue: clear the lease, keep the id so the message keeps its place in the queue.
REQUEUE_ENTRY = (
    "UPDATE mq_entries SET lease_token = NULL, lease_owner = NULL, leased_at_ms = NULL, "
    "lease_expires_at_ms = NULL WHERE id = ? AND lease_token = ? RETURNING queue_id"
)
# A closed or dead connection's leases (ix_mq_entries_lease_owner).
REQUEUE_OWNER = (
    "UPDATE mq_entries SET lease_token = NULL, lease_owner = NULL, leased_at_ms = NULL, "
    "lease_expires_at_ms = NULL WHERE lease_owner = ? AND lease_token IS NOT NULL "
    "RETURNING queue_id"
)
# Leases past their deadline (ix_mq_entries_lease_expiry).
REQUEUE_EXPIRED = (
    "UPDATE mq_entries SET lease_token = NULL, lease_owner = NULL, leased_at_ms = NULL, "
    "lease_expires_at_ms = NULL WHERE lease_token IS NOT NULL AND lease_expires_at_ms <= ? "
    "RETURNING queue_id"
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
    "lease_expires_at_ms = NULL WHERE lease_token IS NOT NULL"
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
UPSERT_META = (
    "INSERT INTO mq_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
INCREMENT_COUNTER = (
    "INSERT INTO mq_counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)
SELECT_COUNTERS = "SELECT name, value FROM mq_counters"

# --- cross-process wake-ups ---------------------------------------------------------------
INSERT_LISTENER = (
    "INSERT OR REPLACE INTO mq_listeners (address, pid, created_at_ms) VALUES (?, ?, ?)"
)
DELETE_LISTENER = "DELETE FROM mq_listeners WHERE address = ?"
SELECT_LISTENERS = "SELECT address FROM mq_listeners"
