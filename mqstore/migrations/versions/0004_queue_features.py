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


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite adds nullable columns without rewriting the tables.
    for name, type_ in QUEUE_COLUMNS:
        op.add_column("mq_queues", sa.Column(name, type_, nullable=True))
    op.add_column("mq_entries", sa.Column("expires_at_ms", sa.Integer(), nullable=True))
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
        from mqstore import codec, core

        for queue_id, arguments in rows:
            args = codec.decode_table(arguments)
            try:
                values = core.feature_columns(args)
            except Exception:  # arguments a newer check refuses: leave the features off
                continue
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


def downgrade() -> None:
    op.drop_index(op.f("ix_mq_entries_expiry"), table_name="mq_entries")
    op.drop_index(op.f("ix_mq_queues_expiry"), table_name="mq_queues")
    # SQLite >= 3.35 drops a column in place (no copy-and-rename that would break the
    # trigger on mq_entries).
    op.drop_column("mq_entries", "expires_at_ms")
    for name, _ in reversed(QUEUE_COLUMNS):
        op.drop_column("mq_queues", name)
