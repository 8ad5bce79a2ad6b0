"""Initial mqstore schema: every mq_ table, its indexes and the release-message trigger.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written by hand from ``mqstore.schema`` and checked against ``metadata.create_all`` by
``tests/integration/test_migrations.py``: the ``sqlite_master`` rows the two produce are equal.
Constraints are listed in the order ``create_all`` renders them (primary key first, then the
others in the order ``mqstore.schema`` creates them), so even the stored CREATE TABLE text
matches. The trigger text is inlined, not imported, so this revision stays frozen when the
schema module later changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RELEASE_MESSAGE_TRIGGER = """\
CREATE TRIGGER IF NOT EXISTS mq_entries_release_message
AFTER DELETE ON mq_entries
WHEN NOT EXISTS (SELECT 1 FROM mq_entries WHERE message_id = OLD.message_id)
BEGIN
    DELETE FROM mq_messages WHERE id = OLD.message_id;
END"""


def upgrade() -> None:
    op.create_table(
        "mq_meta",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_mq_meta")),
    )
    op.create_table(
        "mq_counters",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_mq_counters")),
    )
    op.create_table(
        "mq_exchanges",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("durable", sa.Boolean(), nullable=False),
        sa.Column("auto_delete", sa.Boolean(), nullable=False),
        sa.Column("internal", sa.Boolean(), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=True),
        sa.Column("created_at_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_mq_exchanges")),
    )
    op.create_table(
        "mq_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_start", sa.String(), nullable=False),
        sa.Column("boot_id", sa.String(), nullable=False),
        sa.Column("heartbeat_at_ms", sa.Integer(), nullable=False),
        sa.Column("created_at_ms", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mq_sessions")),
    )
    op.create_table(
        "mq_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exchange", sa.String(), nullable=False),
        sa.Column("routing_key", sa.String(), nullable=False),
        sa.Column("properties", sa.Text(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("published_at_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mq_messages")),
    )
    op.create_table(
        "mq_queues",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("durable", sa.Boolean(), nullable=False),
        sa.Column("exclusive_owner", sa.Integer(), nullable=True),
        sa.Column("auto_delete", sa.Boolean(), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=True),
        sa.Column("visibility_timeout_ms", sa.Integer(), nullable=True),
        sa.Column("consumer_timeout_ms", sa.Integer(), nullable=False),
        sa.Column("max_priority", sa.Integer(), nullable=True),
        sa.Column("created_at_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mq_queues")),
        sa.UniqueConstraint("name", name=op.f("uq_mq_queues_name")),
        sa.ForeignKeyConstraint(
            ["exclusive_owner"],
            ["mq_sessions.id"],
            name=op.f("fk_mq_queues_exclusive_owner_mq_sessions"),
        ),
    )
    op.create_table(
        "mq_bindings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exchange", sa.String(), nullable=False),
        sa.Column("queue_id", sa.Integer(), nullable=False),
        sa.Column("routing_key", sa.String(), nullable=False),
        sa.Column("arguments", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mq_bindings")),
        sa.UniqueConstraint(
            "exchange",
            "routing_key",
            "queue_id",
            "arguments",
            name=op.f("uq_mq_bindings_exchange_routing_key_queue_id_arguments"),
        ),
        sa.ForeignKeyConstraint(
            ["exchange"],
            ["mq_exchanges.name"],
            name=op.f("fk_mq_bindings_exchange_mq_exchanges"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["mq_queues.id"],
            name=op.f("fk_mq_bindings_queue_id_mq_queues"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_mq_bindings_queue_id"), "mq_bindings", ["queue_id"])
    op.create_table(
        "mq_consumers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("queue_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(), nullable=False),
        sa.Column("exclusive", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mq_consumers")),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["mq_sessions.id"],
            name=op.f("fk_mq_consumers_session_id_mq_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["mq_queues.id"],
            name=op.f("fk_mq_consumers_queue_id_mq_queues"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_mq_consumers_queue_id"), "mq_consumers", ["queue_id"])
    op.create_index(op.f("ix_mq_consumers_session_id"), "mq_consumers", ["session_id"])
    op.create_table(
        "mq_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("queue_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("delivery_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_token", sa.Integer(), nullable=True),
        sa.Column("lease_owner", sa.Integer(), nullable=True),
        sa.Column("leased_at_ms", sa.Integer(), nullable=True),
        sa.Column("lease_expires_at_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mq_entries")),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["mq_queues.id"],
            name=op.f("fk_mq_entries_queue_id_mq_queues"),
            ondelete="CASCADE",
        ),
    )
    # The head of each queue: ready entries in delivery order (priority DESC, then id).
    op.create_index(
        op.f("ix_mq_entries_ready"),
        "mq_entries",
        ["queue_id", sa.literal_column("priority DESC"), "id"],
        sqlite_where=sa.text("lease_token IS NULL"),
    )
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
    op.create_index(op.f("ix_mq_entries_queue_id"), "mq_entries", ["queue_id"])
    op.create_index(op.f("ix_mq_entries_message_id"), "mq_entries", ["message_id"])
    op.execute(RELEASE_MESSAGE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS mq_entries_release_message")
    for name in (
        "ix_mq_entries_message_id",
        "ix_mq_entries_queue_id",
        "ix_mq_entries_lease_owner",
        "ix_mq_entries_lease_expiry",
        "ix_mq_entries_ready",
    ):
        op.drop_index(op.f(name), table_name="mq_entries")
    op.drop_table("mq_entries")
    op.drop_index(op.f("ix_mq_consumers_session_id"), table_name="mq_consumers")
    op.drop_index(op.f("ix_mq_consumers_queue_id"), table_name="mq_consumers")
    op.drop_table("mq_consumers")
    op.drop_index(op.f("ix_mq_bindings_queue_id"), table_name="mq_bindings")
    op.drop_table("mq_bindings")
    op.drop_table("mq_queues")
    op.drop_table("mq_messages")
    op.drop_table("mq_sessions")
    op.drop_table("mq_exchanges")
    op.drop_table("mq_counters")
    op.drop_table("mq_meta")
