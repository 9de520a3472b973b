"""comparisons.queued_at: when a comparison last went (back) to the queue.

The sweeper re-sends queued comparisons whose message may be lost once they have waited
`orphan_after` seconds. Counted from the last claim, a pair handed back after a long task looked
lost at once, before its own re-sent message was even published, and was sent a second time in a
batch with the pair that had made the task slow.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("comparisons") as batch:
        batch.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("comparisons") as batch:
        batch.drop_column("queued_at")
