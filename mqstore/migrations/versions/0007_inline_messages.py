"""Single-queue messages live in their entry; one index per queue instead of two.

A message routed to one queue (the common case: the default exchange, a direct binding) is
now stored in its ``mq_entries`` row (``message_id`` NULL, the message's columns set): one
row and two index entries per publish instead of two rows and four index entries, so a
durable publish appends fewer pages to the WAL before its fsync. A message routed to several
queues keeps one ``mq_messages`` row shared by its entries (body stored once), as before.

``ix_mq_entries_ready`` becomes a full index on (queue_id, lease_token, priority DESC, id):
ready entries (lease_token IS NULL) come first in delivery order, so leasing reads it as
before, and it also serves every per-queue lookup (counts, purge, the foreign key's ON DELETE
CASCADE), which makes ``ix_mq_entries_queue_id`` redundant. ``ix_mq_entries_message_id``
holds only shared messages' entries.

SQLite cannot make a column nullable in place: the table is rebuilt (rows, ids and leases
are kept).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Inlined, not imported from mqstore.schema, so this revision stays frozen.
RELEASE_MESSAGE_TRIGGER = """\
CREATE TRIGGER IF NOT EXISTS mq_entries_release_message
AFTER DELETE ON mq_entries
WHEN OLD.message_id IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM mq_entries WHERE message_id = OLD.message_id)
BEGIN
    DELETE FROM mq_messages WHERE id = OLD.message_id;
END"""

OLD_RELEASE_MESSAGE_TRIGGER = """\
CREATE TRIGGER IF NOT EXISTS mq_entries_release_message
AFTER DELETE ON mq_entries
WHEN NOT EXISTS (SELECT 1 FROM mq_entries WHERE message_id = OLD.message_id)
BEGIN
    DELETE FROM mq_messages WHERE id = OLD.message_id;
END"""

COUNT_TRIGGERS = (
    """\
CREATE TRIGGER IF NOT EXISTS mq_entries_count_insert
AFTER INSERT ON mq_entries
WHEN NEW.size IS NOT NULL AND NEW.lease_token IS NULL
BEGIN
    UPDATE mq_queues SET ready_count = ready_count + 1, ready_bytes = ready_bytes + NEW.size
    WHERE id = NEW.queue_id;
END""",
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
TRIGGER_NAMES = (
    "mq_entries_release_message",
    "mq_entries_count_insert",
    "mq_entries_count_delete",
    "mq_entries_count_lease",
)
OLD_INDEXES = (
    "ix_mq_entries_ready",
    "ix_mq_entries_lease_expiry",
    "ix_mq_entries_lease_owner",
    "ix_mq_entries_expiry",
    "ix_mq_entries_scheduled",
    "ix_mq_entries_queue_id",
    "ix_mq_entries_message_id",
)
# Columns both shapes of the table have, copied across the rebuild.
KEPT_COLUMNS = (
    "id, queue_id, message_id, priority, delivery_count, lease_token, lease_owner, "
    "leased_at_ms, lease_expires_at_ms, expires_at_ms, size, deliver_at_ms"
)
INLINE_COLUMNS = (
    ("exchange", sa.String()),
    ("routing_key", sa.String()),
    ("properties", sa.Text()),
    ("body", sa.LargeBinary()),
    ("published_at_ms", sa.Integer()),
    ("amqp_properties", sa.LargeBinary()),
)


def _entries_table(*, inline: bool) -> None:
    columns = [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("queue_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=inline),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("delivery_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_token", sa.Integer(), nullable=True),
        sa.Column("lease_owner", sa.Integer(), nullable=True),
        sa.Column("leased_at_ms", sa.Integer(), nullable=True),
        sa.Column("lease_expires_at_ms", sa.Integer(), nullable=True),
        sa.Column("expires_at_ms", sa.Integer(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("deliver_at_ms", sa.Integer(), nullable=True),
    ]
    if inline:
        columns += [sa.Column(name, type_, nullable=True) for name, type_ in INLINE_COLUMNS]
    op.create_table(
        "mq_entries",
        *columns,
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mq_entries")),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["mq_queues.id"],
            name=op.f("fk_mq_entries_queue_id_mq_queues"),
            ondelete="CASCADE",
        ),
    )


def _common_indexes() -> None:
    op.create_index(
        op.f("ix_mq_entries_lease_expiry"),
        "mq_entries",
        ["lease_expires_at_ms"],
        sqlite_where=sa.text("lease_token IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_mq_entries_lease_owner"),
        "mq_entries",
        ["lease_owner"],
        sqlite_where=sa.text("lease_token IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_mq_entries_expiry"),
        "mq_entries",
        ["expires_at_ms"],
        sqlite_where=sa.text("expires_at_ms IS NOT NULL AND lease_token IS NULL"),
    )
    op.create_index(
        op.f("ix_mq_entries_scheduled"),
        "mq_entries",
        ["deliver_at_ms"],
        sqlite_where=sa.text("deliver_at_ms IS NOT NULL"),
    )
    for trigger in COUNT_TRIGGERS:
        op.execute(trigger)


def _set_aside_entries() -> None:
    """Rename the table out of the way (its triggers and indexes dropped first, so none is
    carried over under the old name)."""
    for name in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    for name in OLD_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute("ALTER TABLE mq_entries RENAME TO mq_entries_rebuild")


def upgrade() -> None:
    _set_aside_entries()
    _entries_table(inline=True)
    op.execute(
        f"INSERT INTO mq_entries ({KEPT_COLUMNS}) SELECT {KEPT_COLUMNS} FROM mq_entries_rebuild"
    )
    op.execute("DROP TABLE mq_entries_rebuild")
    op.create_index(
        op.f("ix_mq_entries_ready"),
        "mq_entries",
        ["queue_id", "lease_token", sa.literal_column("priority DESC"), "id"],
    )
    op.create_index(
        op.f("ix_mq_entries_message_id"),
        "mq_entries",
        ["message_id"],
        sqlite_where=sa.text("message_id IS NOT NULL"),
    )
    _common_indexes()
    op.execute(RELEASE_MESSAGE_TRIGGER)


def downgrade() -> None:
    # Inline messages move to mq_messages (one row each) before the columns go.
    op.execute(
        "INSERT INTO mq_messages (id, exchange, routing_key, properties, body, "
        "published_at_ms, amqp_properties) "
        "SELECT -id, exchange, routing_key, properties, body, published_at_ms, "
        "amqp_properties FROM mq_entries WHERE message_id IS NULL"
    )
    op.execute("UPDATE mq_entries SET message_id = -id WHERE message_id IS NULL")
    _set_aside_entries()
    _entries_table(inline=False)
    op.execute(
        f"INSERT INTO mq_entries ({KEPT_COLUMNS}) SELECT {KEPT_COLUMNS} FROM mq_entries_rebuild"
    )
    op.execute("DROP TABLE mq_entries_rebuild")
    op.create_index(
        op.f("ix_mq_entries_ready"),
        "mq_entries",
        ["queue_id", sa.literal_column("priority DESC"), "id"],
        sqlite_where=sa.text("lease_token IS NULL"),
    )
    op.create_index(op.f("ix_mq_entries_queue_id"), "mq_entries", ["queue_id"])
    op.create_index(op.f("ix_mq_entries_message_id"), "mq_entries", ["message_id"])
    _common_indexes()
    op.execute(OLD_RELEASE_MESSAGE_TRIGGER)
