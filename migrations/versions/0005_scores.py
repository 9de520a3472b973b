"""comparisons.scores and comparisons.regions; layer_metrics' spatial std and dead channels.

A frame-average LPIPS number cannot tell a local regression from sampling noise. Every scored pair now
stores its scores by name (gate.vocabulary.SCORES: the LPIPS map's mean, worst region and area above a
level; the pixel guards' fireflies, flat, nonfinite and outliers) as a JSON object, and the [x, y, w, h]
of those with a location, in the candidate's pixels. Each layer's statistics gain the spatial std (per
channel over H and W, averaged over channels) and the share of dead channels, for both sides. Rows
written before this revision keep them all NULL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LAYER_COLUMNS = ("ref_spatial_std", "cand_spatial_std", "ref_dead", "cand_dead")


def upgrade() -> None:
    with op.batch_alter_table("comparisons") as batch:
        batch.add_column(sa.Column("scores", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("regions", sa.JSON(), nullable=True))
    with op.batch_alter_table("layer_metrics") as batch:
        for name in LAYER_COLUMNS:
            batch.add_column(sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("layer_metrics") as batch:
        for name in reversed(LAYER_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("comparisons") as batch:
        batch.drop_column("regions")
        batch.drop_column("scores")
