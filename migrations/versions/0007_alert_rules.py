"""alerts.rule admits the rules of the spatial scores and feature quality: `score` (a judged score
of a pair: region, area, fireflies, outliers, nonfinite pixels, flat), `flatness` (a candidate
layer's spatial std far below the reference's: a black or flat frame) and `dead` (dead channels).

The constraint was created as ck_alerts_ck_alerts_rule (the naming convention applied to a name
that already followed it); it is recreated under the name the models give it, ck_alerts_rule.
A downgrade deletes the alerts of the new rules, which the older schema cannot hold.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

RULES = ("distance", "score", "sparsity", "variance", "nonfinite", "flatness", "dead", "drift")
PREVIOUS_RULES = ("distance", "sparsity", "variance", "nonfinite", "drift")


def _one_of(values: tuple[str, ...]) -> str:
    return f"rule IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_constraint(op.f("ck_alerts_ck_alerts_rule"), type_="check")
        batch.create_check_constraint(op.f("ck_alerts_rule"), _one_of(RULES))


def downgrade() -> None:
    op.execute(f"DELETE FROM alerts WHERE NOT ({_one_of(PREVIOUS_RULES)})")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_constraint(op.f("ck_alerts_rule"), type_="check")
        batch.create_check_constraint(op.f("ck_alerts_ck_alerts_rule"), _one_of(PREVIOUS_RULES))
