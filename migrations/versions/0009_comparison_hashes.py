"""The sha256 of each comparison's reference and candidate as measured (by the worker when it
computes the pair, at submission for a new frame): `approve` refuses to replace a reference, or to
promote a candidate, that changed since the run measured it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-13
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("comparisons") as batch:
        batch.add_column(sa.Column("ref_sha256", sa.String(), nullable=True))
        batch.add_column(sa.Column("cand_sha256", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("comparisons") as batch:
        batch.drop_column("cand_sha256")
        batch.drop_column("ref_sha256")
