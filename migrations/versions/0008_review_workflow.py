"""What a studio's CI workflow needs of the store: runs carry metadata (commit, pipeline, who), a
comparison can be `new` (a candidate without a reference) or `missing` (a reference without a
candidate), scored pairs may keep small thumbnails for the report (tone-mapped for EXR), and every
approval (a run's candidates promoted to references) is recorded with the files' sha256 before and
after.

A downgrade deletes the new and missing comparisons, which the older schema cannot hold.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STATUSES = ("queued", "running", "done", "error", "new", "missing")
PREVIOUS_STATUSES = ("queued", "running", "done", "error")


def _one_of(values: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("meta", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    with op.batch_alter_table("comparisons") as batch:
        batch.drop_constraint("ck_comparisons_status", type_="check")
        batch.create_check_constraint("ck_comparisons_status", _one_of(STATUSES))
        batch.add_column(sa.Column("ref_thumb", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("cand_thumb", sa.LargeBinary(), nullable=True))
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", name="fk_approvals_run_id_runs"), nullable=False),
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("cand", sa.String(), nullable=False),
        sa.Column("sha256_before", sa.String(), nullable=True),
        sa.Column("sha256_after", sa.String(), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(), nullable=True),
    )
    op.create_index("ix_approvals_run_id", "approvals", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_approvals_run_id", table_name="approvals")
    op.drop_table("approvals")
    op.execute(f"DELETE FROM layer_metrics WHERE comparison_id IN (SELECT id FROM comparisons WHERE NOT "
               f"({_one_of(PREVIOUS_STATUSES)}))")
    op.execute(f"DELETE FROM comparisons WHERE NOT ({_one_of(PREVIOUS_STATUSES)})")
    with op.batch_alter_table("comparisons") as batch:
        batch.drop_column("cand_thumb")
        batch.drop_column("ref_thumb")
        batch.drop_constraint("ck_comparisons_status", type_="check")
        batch.create_check_constraint("ck_comparisons_status", _one_of(PREVIOUS_STATUSES))
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("meta")
