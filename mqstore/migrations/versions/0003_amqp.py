"""What the AMQP server needs: raw AMQP property bytes and exchange-to-exchange bindings.

Re-encoding decoded AMQP properties is lossy (a double header comes back as a 32-bit float,
integer widths change, non-UTF-8 long strings fail), so the AMQP server stores the content
header's property bytes as they arrived (``mq_messages.amqp_properties``) and writes them back
unchanged on delivery. ``mq_exchange_bindings`` holds AMQP's exchange.bind bindings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN: SQLite adds a nullable column without rewriting the table.
    op.add_column("mq_messages", sa.Column("amqp_properties", sa.LargeBinary(), nullable=True))
    op.create_table(
        "mq_exchange_bindings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("destination", sa.String(), nullable=False),
        sa.Column("routing_key", sa.String(), nullable=False),
        sa.Column("arguments", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mq_exchange_bindings")),
        sa.UniqueConstraint(
            "source",
            "routing_key",
            "destination",
            "arguments",
            name=op.f("uq_mq_exchange_bindings_source_routing_key_destination_arguments"),
        ),
        sa.ForeignKeyConstraint(
            ["source"],
            ["mq_exchanges.name"],
            name=op.f("fk_mq_exchange_bindings_source_mq_exchanges"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["destination"],
            ["mq_exchanges.name"],
            name=op.f("fk_mq_exchange_bindings_destination_mq_exchanges"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        op.f("ix_mq_exchange_bindings_destination"), "mq_exchange_bindings", ["destination"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_mq_exchange_bindings_destination"), table_name="mq_exchange_bindings")
    op.drop_table("mq_exchange_bindings")
    # SQLite >= 3.35 drops a column in place; a batch (copy-and-rename) would break the
    # trigger on mq_entries that names mq_messages.
    op.drop_column("mq_messages", "amqp_properties")
