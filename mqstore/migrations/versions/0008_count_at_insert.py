"""Sized entries are counted in by the code that inserts them, not by a trigger.

``mq_entries_count_insert`` ran (as a trigger sub-program) for every inserted entry, though
only entries of length-limited queues are counted: about 4 us per single-row publish, a
third of its INSERT (measured). Those entries are inserted in one place
(``store.insert_message``), which now adds them to ``mq_queues.ready_count/ready_bytes``
itself; the delete and lease triggers still follow them afterwards.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Inlined, not imported from mqstore.schema, so this revision stays frozen.
COUNT_INSERT_TRIGGER = """\
CREATE TRIGGER IF NOT EXISTS mq_entries_count_insert
AFTER INSERT ON mq_entries
WHEN NEW.size IS NOT NULL AND NEW.lease_token IS NULL
BEGIN
    UPDATE mq_queues SET ready_count = ready_count + 1, ready_bytes = ready_bytes + NEW.size
    WHERE id = NEW.queue_id;
END"""


def upgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS mq_entries_count_insert")


def downgrade() -> None:
    op.execute(COUNT_INSERT_TRIGGER)
