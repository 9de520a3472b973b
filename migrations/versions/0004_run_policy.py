"""runs.policy and runs.policy_hash: which policy judges a run, and which one produced its verdict.

Three judges (the gate daemon, `check`, `wait`) each brought their own policies, so the first to look
decided the verdict. A run now records the policy its submitter gave (`check`'s policies and
threshold, `submit --threshold`), every judge uses it, and the daemon's policies judge only the runs
without one (then written with the verdict). `policy_hash` is the sha256 of the policy's canonical
JSON, written with the verdict. Runs judged before this revision keep both NULL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("policy", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("policy_hash", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("policy_hash")
        batch.drop_column("policy")
