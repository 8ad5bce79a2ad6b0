"""The tables of an mqstore file, as SQLAlchemy Core metadata (DDL only, no queries).

Every table is prefixed ``mq_`` so a broker can live beside an application's own tables in one
file (the outbox pattern). Alembic migrations in ``mqstore/migrations`` are generated from
this module; a test asserts that the migrations at head equal it.

A message routed to one queue is stored in its ``mq_entries`` row (``message_id`` NULL): one
row per publish. A message routed to several queues is stored once in ``mq_messages`` and each
queue gets an entry pointing at it; the trigger ``mq_entries_release_message`` deletes the
message when its last entry goes, so a fanout to ten queues keeps one copy of the body.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Key/value facts about the file: the boot id leases were taken under, and so on.
meta = Table(
    "mq_meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)

# Monotonic counters (unroutable messages dropped, ...), shared by every process.
counters = Table(
    "mq_counters",
    metadata,
    Column("name", String, primary_key=True),
    Column("value", Integer, nullable=False, server_default=text("0")),
)

exchanges = Table(
    "mq_exchanges",
    metadata,
    Column("name", String, primary_key=True),
    Column("type", String, nullable=False),
    Column("durable", Boolean, nullable=False),
    Column("auto_delete", Boolean, nullable=False),
    Column("internal", Boolean, nullable=False),
    Column("arguments", Text, nullable=True),
    Column("created_at_ms", Integer, nullable=False),
)

# One row per live connection: its process, how to tell a reused pid apart, its heartbeat.
sessions = Table(
    "mq_sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("process_start", String, nullable=False),
    Column("boot_id", String, nullable=False),
    Column("heartbeat_at_ms", Integer, nullable=False),
    Column("created_at_ms", Integer, nullable=False),
    Column("name", String, nullable=True),
)

# Processes with consumers waiting: the datagram address that wakes them after a commit.
listeners = Table(
    "mq_listeners",
    metadata,
    Column("address", String, primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("created_at_ms", Integer, nullable=False),
)

queues = Table(
    "mq_queues",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String, nullable=False, unique=True),
    Column("durable", Boolean, nullable=False),
    Column("exclusive_owner", Integer, ForeignKey("mq_sessions.id"), nullable=True),
    Column("auto_delete", Boolean, nullable=False),
    Column("arguments", Text, nullable=True),
    # NULL: leases last the leasing connection's default visibility timeout.
    Column("visibility_timeout_ms", Integer, nullable=True),
    Column("consumer_timeout_ms", Integer, nullable=False),
    Column("max_priority", Integer, nullable=True),
    Column("created_at_ms", Integer, nullable=False),
    # Queue features (docs/queue-features.md); NULL: the feature is off for this queue.
    Column("message_ttl_ms", Integer, nullable=True),  # x-message-ttl
    Column("max_length", Integer, nullable=True),  # x-max-length
    Column("max_length_bytes", Integer, nullable=True),  # x-max-length-bytes
    Column("dead_letter_exchange", String, nullable=True),  # x-dead-letter-exchange
    Column("delivery_limit", Integer, nullable=True),  # x-delivery-limit
    Column("expires_ms", Integer, nullable=True),  # x-expires
    # Wall-clock deadline after which an unused queue is deleted (x-expires).
    Column("expires_at_ms", Integer, nullable=True),
    # Ready messages and their body bytes, kept by the mq_entries_count_* triggers for
    # queues with a length limit only (their entries carry a size); 0 for other queues.
    Column("ready_count", Integer, nullable=False, server_default=text("0")),
    Column("ready_bytes", Integer, nullable=False, server_default=text("0")),
    # Deduplication window in ms (x-deduplication-window); NULL: off. Added by 0005.
    Column("dedup_window_ms", Integer, nullable=True),
)
# Unused queues by deadline, for the queue-expiry sweep.
Index(
    "ix_mq_queues_expiry",
    queues.c.expires_at_ms,
    sqlite_where=queues.c.expires_at_ms.is_not(None),
)

# Message ids accepted by queues with a deduplication window (x-deduplication-window): a
# publish whose message_id has a row here that has not expired is dropped for that queue.
# The upkeep sweep deletes expired rows by expires_at_ms.
dedup = Table(
    "mq_dedup",
    metadata,
    Column(
        "queue_id",
        Integer,
        ForeignKey("mq_queues.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("message_id", String, primary_key=True),
    Column("accepted_at_ms", Integer, nullable=False),
    Column("expires_at_ms", Integer, nullable=False),
)
Index("ix_mq_dedup_expires_at_ms", dedup.c.expires_at_ms)

bindings = Table(
    "mq_bindings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "exchange",
        String,
        ForeignKey("mq_exchanges.name", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("queue_id", Integer, ForeignKey("mq_queues.id", ondelete="CASCADE"), nullable=False),
    Column("routing_key", String, nullable=False),
    # Encoded with codec.encode_table; '' when there are no arguments, so it can be unique.
    Column("arguments", Text, nullable=False, server_default=text("''")),
    # Also the routing index: a direct publish seeks (exchange, routing_key).
    UniqueConstraint("exchange", "routing_key", "queue_id", "arguments"),
)
Index("ix_mq_bindings_queue_id", bindings.c.queue_id)

# Exchange-to-exchange bindings (AMQP exchange.bind): what ``source`` routes with this key
# is routed on through ``destination`` as well. Deleting either exchange deletes the binding.
exchange_bindings = Table(
    "mq_exchange_bindings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String, ForeignKey("mq_exchanges.name", ondelete="CASCADE"), nullable=False),
    Column(
        "destination", String, ForeignKey("mq_exchanges.name", ondelete="CASCADE"), nullable=False
    ),
    Column("routing_key", String, nullable=False),
    Column("arguments", Text, nullable=False, server_default=text("''")),
    # Also the routing index: a publish reads the bindings of its exchange (source).
    UniqueConstraint("source", "routing_key", "destination", "arguments"),
)
Index("ix_mq_exchange_bindings_destination", exchange_bindings.c.destination)

consumers = Table(
    "mq_consumers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("session_id", Integer, ForeignKey("mq_sessions.id", ondelete="CASCADE"), nullable=False),
    Column("queue_id", Integer, ForeignKey("mq_queues.id", ondelete="CASCADE"), nullable=False),
    Column("tag", String, nullable=False),
    Column("exclusive", Boolean, nullable=False),
    # x-priority: consumers of a queue with a higher priority get its messages while they
    # have capacity; ``blocked`` (1: its prefetch window is full) is kept only for
    # consumers with an x-priority argument (docs/consumers.md).
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("blocked", Integer, nullable=False, server_default=text("0")),
)
Index("ix_mq_consumers_queue_id", consumers.c.queue_id)
Index("ix_mq_consumers_session_id", consumers.c.session_id)

messages = Table(
    "mq_messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("exchange", String, nullable=False),
    Column("routing_key", String, nullable=False),
    # codec.encode_properties text; NULL when the message has no properties.
    Column("properties", Text, nullable=True),
    Column("body", LargeBinary, nullable=False),
    Column("published_at_ms", Integer, nullable=False),
    # The AMQP content header's property bytes as an AMQP publisher sent them (NULL for
    # other publishers): delivered back unchanged, since re-encoding decoded ones is lossy.
    Column("amqp_properties", LargeBinary, nullable=True),
)

# A message's place in one queue. The id orders the queue (FIFO within a priority); a
# requeue clears the lease and keeps the id, so the message keeps its place. The message
# itself is either inline (message_id NULL, the columns after deliver_at_ms set) or shared
# with other queues' entries in mq_messages (message_id set, those columns NULL).
entries = Table(
    "mq_entries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("queue_id", Integer, ForeignKey("mq_queues.id", ondelete="CASCADE"), nullable=False),
    Column("message_id", Integer, nullable=True),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("delivery_count", Integer, nullable=False, server_default=text("0")),
    # Fencing token of the current lease; NULL means ready for delivery.
    Column("lease_token", Integer, nullable=True),
    Column("lease_owner", Integer, nullable=True),
    Column("leased_at_ms", Integer, nullable=True),
    Column("lease_expires_at_ms", Integer, nullable=True),
    # Wall-clock time the message expires in this queue (x-message-ttl, expiration); NULL:
    # never.
    Column("expires_at_ms", Integer, nullable=True),
    # The body's bytes, set only in queues with a length limit: such entries are counted
    # into mq_queues.ready_count/ready_bytes by triggers; NULL for every other entry.
    Column("size", Integer, nullable=True),
    # Wall-clock time a delayed message (x-delay, delay=) becomes deliverable; NULL: it is.
    # Until then the entry holds the SCHEDULED pseudo lease token (-1), which keeps it out
    # of the ready index and the length-limit counts (docs/queue-features.md).
    Column("deliver_at_ms", Integer, nullable=True),
    # The message, when it is not shared (message_id NULL): as in mq_messages.
    Column("exchange", String, nullable=True),
    Column("routing_key", String, nullable=True),
    Column("properties", Text, nullable=True),
    Column("body", LargeBinary, nullable=True),
    Column("published_at_ms", Integer, nullable=True),
    Column("amqp_properties", LargeBinary, nullable=True),
)
# Every entry of a queue, ready ones (lease_token NULL) first in delivery order: leasing
# reads the head of the queue from it, and counts, purge and the foreign key's ON DELETE
# CASCADE find a queue's entries by its prefix. A publish adds one entry here, nowhere else.
Index(
    "ix_mq_entries_ready",
    entries.c.queue_id,
    entries.c.lease_token,
    entries.c.priority.desc(),
    entries.c.id,
)
# Leases by deadline, for the expiry sweep.
Index(
    "ix_mq_entries_lease_expiry",
    entries.c.lease_expires_at_ms,
    sqlite_where=entries.c.lease_token.is_not(None),
)
# Leases by owner, to release a closed or dead connection's deliveries at once.
Index(
    "ix_mq_entries_lease_owner",
    entries.c.lease_owner,
    sqlite_where=entries.c.lease_token.is_not(None),
)
# Ready entries with a TTL by deadline, for the expiry sweep (entries without one are not
# in it, so a publish without TTL pays nothing).
Index(
    "ix_mq_entries_expiry",
    entries.c.expires_at_ms,
    sqlite_where=entries.c.expires_at_ms.is_not(None) & entries.c.lease_token.is_(None),
)
# Scheduled entries by due time, for the promotion sweep (entries without a delay are not
# in it, so a plain publish pays nothing).
Index(
    "ix_mq_entries_scheduled",
    entries.c.deliver_at_ms,
    sqlite_where=entries.c.deliver_at_ms.is_not(None),
)
# The entries sharing a message (the release trigger); inline entries are not in it.
Index(
    "ix_mq_entries_message_id",
    entries.c.message_id,
    sqlite_where=entries.c.message_id.is_not(None),
)

RELEASE_MESSAGE_TRIGGER = """\
CREATE TRIGGER IF NOT EXISTS mq_entries_release_message
AFTER DELETE ON mq_entries
WHEN OLD.message_id IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM mq_entries WHERE message_id = OLD.message_id)
BEGIN
    DELETE FROM mq_messages WHERE id = OLD.message_id;
END"""

event.listen(entries, "after_create", DDL(RELEASE_MESSAGE_TRIGGER))

# Length limits (x-max-length, x-max-length-bytes) count ready messages. Entries of limited
# queues carry their size. store.insert_message, the one place that inserts sized entries,
# counts them in; these triggers then keep their queue's ready_count/ready_bytes whatever
# statement makes them ready or not later (lease, requeue, ack, purge, expiry, promotion):
# O(1) limit checks. Other entries (size NULL) only evaluate the WHEN clause. (An INSERT
# trigger cost every single-row publish ~4 us, a third of its INSERT: migration 0008.)
COUNT_TRIGGERS = (
    """\
CREATE TRIGGER IF NOT EXISTS mq_entries_count_delete
AFTER DELETE ON mq_entries
WHEN OLD.size IS NOT NULL AND OLD.lease_token IS NULL
BEGIN
    UPDATE mq_queues SET ready_count = ready_count - 1, ready_bytes = ready_bytes - OLD.size
    WHERE id = OLD.queue_id;
END""",
    """\
CREATE TRIGGER IF NOT EXISTS mq_entries_count_lease
AFTER UPDATE OF lease_token ON mq_entries
WHEN NEW.size IS NOT NULL AND (OLD.lease_token IS NULL) != (NEW.lease_token IS NULL)
BEGIN
    UPDATE mq_queues SET
        ready_count = ready_count + (CASE WHEN NEW.lease_token IS NULL THEN 1 ELSE -1 END),
        ready_bytes = ready_bytes
            + (CASE WHEN NEW.lease_token IS NULL THEN NEW.size ELSE -NEW.size END)
    WHERE id = NEW.queue_id;
END""",
)
for _trigger in COUNT_TRIGGERS:
    event.listen(entries, "after_create", DDL(_trigger))
