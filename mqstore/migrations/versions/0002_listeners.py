"""Listeners: the wake-up address of each process with consumers waiting on the file.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mq_listeners",
        sa.Column("address", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("created_at_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_mq_listeners")),
    )


def downgrade() -> None:
    op.drop_table("mq_listeners")
