"""Queue features: TTL, queue expiry, length limits, dead-lettering, delivery limits.

The queue arguments the store enforces in SQL get columns on ``mq_queues`` (NULL: off);
each entry gets the wall-clock time it expires (``mq_entries.expires_at_ms``, NULL: never).
Two partial indexes find what is due without touching queues or messages that have no TTL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUE_COLUMNS = (
    ("message_ttl_ms", sa.Integer()),
    ("max_length", sa.Integer()),
    ("max_length_bytes", sa.Integer()),
    ("dead_letter_exchange", sa.String()),
    ("delivery_limit", sa.Integer()),
    ("expires_ms", sa.Integer()),
    ("expires_at_ms", sa.Integer()),
)

# Inlined, not imported from mqstore.schema, so this revision stays frozen.
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


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite adds nullable columns without rewriting the tables.
    for name, type_ in QUEUE_COLUMNS:
        op.add_column("mq_queues", sa.Column(name, type_, nullable=True))
    for name in ("ready_count", "ready_bytes"):
        op.add_column(
            "mq_queues",
            sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False),
        )
    op.add_column("mq_entries", sa.Column("expires_at_ms", sa.Integer(), nullable=True))
    op.add_column("mq_entries", sa.Column("size", sa.Integer(), nullable=True))
    for trigger in COUNT_TRIGGERS:
        op.execute(trigger)
    op.create_index(
        op.f("ix_mq_queues_expiry"),
        "mq_queues",
        ["expires_at_ms"],
        sqlite_where=sa.text("expires_at_ms IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_mq_entries_expiry"),
        "mq_entries",
        ["expires_at_ms"],
        sqlite_where=sa.text("expires_at_ms IS NOT NULL AND lease_token IS NULL"),
    )
    # Queues declared before this revision keep their arguments; fill the new columns from
    # them so the features apply to existing queues too.
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, arguments FROM mq_queues WHERE arguments IS NOT NULL")
    ).fetchall()
    if rows:
        from mqstore import codec  # the stored format of arguments

        def int_arg(args: dict, key: str) -> int | None:
            value = args.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        for queue_id, arguments in rows:
            args = codec.decode_table(arguments)
            dlx = args.get("x-dead-letter-exchange")
            values = {
                "message_ttl_ms": int_arg(args, "x-message-ttl"),
                "max_length": int_arg(args, "x-max-length"),
                "max_length_bytes": int_arg(args, "x-max-length-bytes"),
                "dead_letter_exchange": dlx if isinstance(dlx, str) else None,
                "delivery_limit": int_arg(args, "x-delivery-limit"),
                "expires_ms": int_arg(args, "x-expires"),
            }
            expires = values["expires_ms"]
            # The x-expires timer starts now: the queue was not watched before.
            expires_at = None if expires is None else int(time.time() * 1000) + expires
            conn.execute(
                sa.text(
                    "UPDATE mq_queues SET message_ttl_ms = :message_ttl_ms, "
                    "max_length = :max_length, max_length_bytes = :max_length_bytes, "
                    "dead_letter_exchange = :dead_letter_exchange, "
                    "delivery_limit = :delivery_limit, expires_ms = :expires_ms, "
                    "expires_at_ms = :expires_at_ms WHERE id = :id"
                ),
                {**values, "id": queue_id, "expires_at_ms": expires_at},
            )
            if values["max_length"] is not None or values["max_length_bytes"] is not None:
                # Its entries start being counted: size them, then count the ready ones.
                conn.execute(
                    sa.text(
                        "UPDATE mq_entries SET size = (SELECT length(body) FROM mq_messages m "
                        "WHERE m.id = mq_entries.message_id) WHERE queue_id = :id"
                    ),
                    {"id": queue_id},
                )
                conn.execute(
                    sa.text(
                        "UPDATE mq_queues SET ready_count = (SELECT count(*) FROM mq_entries "
                        "WHERE queue_id = :id AND lease_token IS NULL), ready_bytes = "
                        "(SELECT coalesce(sum(size), 0) FROM mq_entries "
                        "WHERE queue_id = :id AND lease_token IS NULL) WHERE id = :id"
                    ),
                    {"id": queue_id},
                )


def downgrade() -> None:
    for name in ("mq_entries_count_lease", "mq_entries_count_delete", "mq_entries_count_insert"):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index(op.f("ix_mq_entries_expiry"), table_name="mq_entries")
    op.drop_index(op.f("ix_mq_queues_expiry"), table_name="mq_queues")
    # SQLite >= 3.35 drops a column in place (no copy-and-rename that would break the
    # trigger on mq_entries).
    op.drop_column("mq_entries", "size")
    op.drop_column("mq_entries", "expires_at_ms")
    op.drop_column("mq_queues", "ready_bytes")
    op.drop_column("mq_queues", "ready_count")
    for name, _ in reversed(QUEUE_COLUMNS):
        op.drop_column("mq_queues", name)
