"""Raw AMQP property bytes: messages published over AMQP keep their exact wire encoding.

Re-encoding decoded AMQP properties is lossy (a double header comes back as a 32-bit float,
integer widths change, non-UTF-8 long strings fail), so the AMQP server stores the content
header's property bytes as they arrived and writes them back unchanged on delivery.

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


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place; a batch (copy-and-rename) would break the
    # trigger on mq_entries that names mq_messages.
    op.drop_column("mq_messages", "amqp_properties")
