"""Deduplication: ``x-deduplication-window`` queues drop a publish whose message_id they
already accepted within the window.

``mq_queues.dedup_window_ms`` holds the window (NULL: off). ``mq_dedup`` remembers, per queue,
each accepted message_id and until when it blocks a duplicate; the upkeep sweep deletes the
rows whose window has passed (``ix_mq_dedup_expires_at_ms``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("mq_queues", sa.Column("dedup_window_ms", sa.Integer(), nullable=True))
    op.create_table(
        "mq_dedup",
        sa.Column("queue_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("accepted_at_ms", sa.Integer(), nullable=False),
        sa.Column("expires_at_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["mq_queues.id"],
            name=op.f("fk_mq_dedup_queue_id_mq_queues"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("queue_id", "message_id", name=op.f("pk_mq_dedup")),
    )
    op.create_index(op.f("ix_mq_dedup_expires_at_ms"), "mq_dedup", ["expires_at_ms"])
    # Queues declared before this revision with the argument get their window now.
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, arguments FROM mq_queues WHERE arguments IS NOT NULL")
    ).fetchall()
    if rows:
        from mqstore import codec  # the stored format of arguments

        for queue_id, arguments in rows:
            value = codec.decode_table(arguments).get("x-deduplication-window")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                conn.execute(
                    sa.text("UPDATE mq_queues SET dedup_window_ms = :w WHERE id = :id"),
                    {"w": int(value * 1000), "id": queue_id},
                )


def downgrade() -> None:
    op.drop_index(op.f("ix_mq_dedup_expires_at_ms"), table_name="mq_dedup")
    op.drop_table("mq_dedup")
    op.drop_column("mq_queues", "dedup_window_ms")
