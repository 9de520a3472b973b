"""Initial schema: suites, runs, comparisons, layer metrics, alerts, workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
OPEN_ALERT = sa.text("state = 'open'")


def upgrade() -> None:
    op.create_table(
        "suites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_suites"),
        sa.UniqueConstraint("name", name="uq_suites_name"),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
        sa.Column("hostname", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_workers"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("suite_id", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("net", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("precision", sa.String(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=True),
        sa.Column("evaluated_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("verdict IN ('pass', 'fail', 'error')", name="ck_runs_verdict"),
        sa.ForeignKeyConstraint(["suite_id"], ["suites.id"], name="fk_runs_suite_id_suites"),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_suite_id", "runs", ["suite_id"])
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("cand", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("distance", sa.Double(), nullable=True),
        sa.Column("net", sa.String(), nullable=True),
        sa.Column("weights_version", sa.String(), nullable=True),
        sa.Column("precision", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("worker", sa.String(), nullable=True),
        sa.Column("claimed_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("decode_ms", sa.Double(), nullable=True),
        sa.Column("model_ms", sa.Double(), nullable=True),
        sa.Column("heatmap_png", sa.LargeBinary(), nullable=True),
        sa.CheckConstraint("status IN ('queued', 'running', 'done', 'error')", name="ck_comparisons_status"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_comparisons_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_comparisons"),
        sa.UniqueConstraint("run_id", "ref", "cand", name="uq_comparisons_run_id_ref_cand"),
    )
    op.create_index("ix_comparisons_status", "comparisons", ["status"])
    op.create_table(
        "layer_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("layer_index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("distance", sa.Double(), nullable=True),
        *(
            sa.Column(f"{side}_{stat}", sa.Double(), nullable=True)
            for side in ("ref", "cand")
            for stat in ("sparsity", "mean", "std", "min", "max")
        ),
        sa.Column("ref_nonfinite", sa.Integer(), nullable=False),
        sa.Column("cand_nonfinite", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["comparison_id"],
            ["comparisons.id"],
            name="fk_layer_metrics_comparison_id_comparisons",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_layer_metrics"),
        sa.UniqueConstraint(
            "comparison_id", "layer_index", name="uq_layer_metrics_comparison_id_layer_index"
        ),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("suite_id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("opened_at", TIMESTAMP, nullable=False),
        sa.Column("resolved_at", TIMESTAMP, nullable=True),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.Column("last_notified_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "rule IN ('distance', 'sparsity', 'variance', 'nonfinite', 'drift')", name="ck_alerts_rule"
        ),
        sa.CheckConstraint("state IN ('open', 'resolved')", name="ck_alerts_state"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_alerts_run_id_runs"),
        sa.ForeignKeyConstraint(["suite_id"], ["suites.id"], name="fk_alerts_suite_id_suites"),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_suite_id_rule_state", "alerts", ["suite_id", "rule", "state"])
    op.create_index(
        "uq_alerts_open_fingerprint",
        "alerts",
        ["fingerprint"],
        unique=True,
        postgresql_where=OPEN_ALERT,
        sqlite_where=OPEN_ALERT,
    )


def downgrade() -> None:
    for table in ("alerts", "layer_metrics", "comparisons", "runs", "workers", "suites"):
        op.drop_table(table)
