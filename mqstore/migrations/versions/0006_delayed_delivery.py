"""Delayed delivery: a message published with ``x-delay`` (or ``delay=``) is stored at once
but becomes deliverable only at ``mq_entries.deliver_at_ms`` (wall clock).

Until then its entry holds the SCHEDULED pseudo lease token (-1), so it stays out of the
ready index; the partial index ``ix_mq_entries_scheduled`` finds what is due (the upkeep
sweep and every lease promote due entries) without touching entries that have no delay.

Consumer priorities (``x-priority``): ``mq_consumers.priority`` and ``blocked`` (its prefetch
window is full), so consumers in every process defer to higher-priority ones with capacity.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for name in ("priority", "blocked"):
        op.add_column(
            "mq_consumers",
            sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False),
        )
    op.add_column("mq_entries", sa.Column("deliver_at_ms", sa.Integer(), nullable=True))
    op.create_index(
        op.f("ix_mq_entries_scheduled"),
        "mq_entries",
        ["deliver_at_ms"],
        sqlite_where=sa.text("deliver_at_ms IS NOT NULL"),
    )


def downgrade() -> None:
    # Scheduled messages become deliverable at once rather than being lost.
    op.execute(
        "UPDATE mq_entries SET lease_token = NULL, deliver_at_ms = NULL "
        "WHERE deliver_at_ms IS NOT NULL"
    )
    op.drop_index(op.f("ix_mq_entries_scheduled"), table_name="mq_entries")
    op.drop_column("mq_entries", "deliver_at_ms")
    op.drop_column("mq_consumers", "blocked")
    op.drop_column("mq_consumers", "priority")
