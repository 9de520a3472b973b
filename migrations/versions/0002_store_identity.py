"""Store identity: one random key per database, so each store gets its own broker queue.

Workers and producers that share a broker but not a database would otherwise take each other's
messages, find none of the ids in their own store, and acknowledge them: the work then waits for the
sweeper instead of running.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    identity = op.create_table(
        "store_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_store_identity_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_store_identity"),
    )
    op.execute(sa.insert(identity).values(id=1, key=uuid.uuid4().hex, created_at=sa.func.now()))


def downgrade() -> None:
    op.drop_table("store_identity")
