"""calibrations: thresholds learnt from known-good renders; runs.calibration_ids: which ones judged a run.

`lpips-gate calibrate` compares folders of accepted re-renders with the references and stores, per
(suite, net, weights version), the limit of every score a little above its noise floor: for the
suite, and per image where enough good renders of it were scored. Every calibration is kept (when,
from which runs, how many pairs, with which margin); the newest per key fills the thresholds a run's
policy leaves unset. A run records the calibrations that judged it, so its pair verdicts are shown
as they were judged after a newer calibration is stored. Runs judged before keep it NULL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("suite_id", sa.Integer(), nullable=False),
        sa.Column("net", sa.String(), nullable=False),
        sa.Column("weights_version", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_ids", sa.JSON(), nullable=False),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.Column("margin", sa.Double(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("per_image", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["suite_id"], ["suites.id"], name="fk_calibrations_suite_id_suites"),
        sa.PrimaryKeyConstraint("id", name="pk_calibrations"),
    )
    op.create_index(
        "ix_calibrations_suite_id_net_weights_version", "calibrations", ["suite_id", "net", "weights_version"]
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("calibration_ids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("calibration_ids")
    op.drop_index("ix_calibrations_suite_id_net_weights_version", table_name="calibrations")
    op.drop_table("calibrations")
