"""The schema as typed SQLAlchemy 2 models. The database itself is built only by the Alembic
migrations in `migrations/`; a test checks that the two never drift apart."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from gate.vocabulary import ALERT_RULES, ALERT_STATES, COMPARISON_STATUSES, VERDICTS

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
OPEN_ALERT = text("state = 'open'")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both dialects (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware one (UTC)")
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), float: Double(), str: String(), dict[str, Any]: JSON()}


class Suite(Base):
    __tablename__ = "suites"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_one_of("verdict", VERDICTS), name="verdict"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    suite_id: Mapped[int] = mapped_column(ForeignKey("suites.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    threshold: Mapped[float | None]
    net: Mapped[str]
    version: Mapped[str]
    precision: Mapped[str]
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    verdict: Mapped[str | None]
    evaluated_at: Mapped[datetime | None]
    # the policy that judges it (gate.judging.policy.SuitePolicies as JSON): its submitter's, or the
    # gate daemon's, written with the verdict; and the sha256 of the policy that produced the verdict
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    policy_hash: Mapped[str | None]
    # the calibrations (gate.calibration.store) that filled what that policy leaves unset, written
    # with the verdict; NULL when none did
    calibration_ids: Mapped[list[int] | None] = mapped_column(JSON(none_as_null=True))
    # what produced it, as its submitter says (`--meta KEY=VALUE`: commit, pipeline, author)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default=text("'{}'"))

    suite: Mapped[Suite] = relationship(lazy="joined")


class Comparison(Base):
    __tablename__ = "comparisons"
    __table_args__ = (
        UniqueConstraint("run_id", "ref", "cand"),
        CheckConstraint(_one_of("status", COMPARISON_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    ref: Mapped[str]
    cand: Mapped[str]
    status: Mapped[str] = mapped_column(default="queued", index=True)
    distance: Mapped[float | None]
    net: Mapped[str | None]  # the backbone that produced `distance` (differs from the run's after a fallback)
    weights_version: Mapped[str | None]
    precision: Mapped[str | None]
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None]
    worker: Mapped[str | None]
    claimed_at: Mapped[datetime | None]
    queued_at: Mapped[datetime | None]  # when it last went (back) to the queue; NULL in rows older than 0003
    finished_at: Mapped[datetime | None]
    decode_ms: Mapped[float | None]
    model_ms: Mapped[float | None]
    heatmap_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    # every score of a scored pair by name (gate.vocabulary.SCORES), and [x, y, w, h] in the candidate's
    # pixels of those with a location; NULL for pairs never scored and rows older than 0005
    scores: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    regions: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # small previews of both images for the report (tone-mapped for EXR); NULL unless the run asked for maps
    ref_thumb: Mapped[bytes | None] = mapped_column(LargeBinary)
    cand_thumb: Mapped[bytes | None] = mapped_column(LargeBinary)
    # the files' sha256 as measured (worker, or submission for a new frame): what `approve` checks
    ref_sha256: Mapped[str | None]
    cand_sha256: Mapped[str | None]


class LayerMetric(Base):
    """One backbone layer of one comparison; statistics are NULL where they were not finite."""

    __tablename__ = "layer_metrics"
    __table_args__ = (UniqueConstraint("comparison_id", "layer_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"))
    layer_index: Mapped[int]
    name: Mapped[str]
    distance: Mapped[float | None]
    ref_sparsity: Mapped[float | None]
    ref_mean: Mapped[float | None]
    ref_std: Mapped[float | None]
    ref_min: Mapped[float | None]
    ref_max: Mapped[float | None]
    ref_nonfinite: Mapped[int]
    ref_spatial_std: Mapped[float | None]
    ref_dead: Mapped[float | None]
    cand_sparsity: Mapped[float | None]
    cand_mean: Mapped[float | None]
    cand_std: Mapped[float | None]
    cand_min: Mapped[float | None]
    cand_max: Mapped[float | None]
    cand_nonfinite: Mapped[int]
    cand_spatial_std: Mapped[float | None]
    cand_dead: Mapped[float | None]


class Calibration(Base):
    """Thresholds learnt from known-good renders (gate.calibration): every one is kept, the newest
    per (suite, net, weights_version) applies."""

    __tablename__ = "calibrations"
    __table_args__ = (Index("ix_calibrations_suite_id_net_weights_version", "suite_id", "net", "weights_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    suite_id: Mapped[int] = mapped_column(ForeignKey("suites.id"))
    net: Mapped[str]
    weights_version: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    run_ids: Mapped[list[int]] = mapped_column(JSON)  # the runs of good renders it was learnt from
    pairs: Mapped[int]
    margin: Mapped[float]
    thresholds: Mapped[dict[str, Any]]  # score -> limit, for the suite
    per_image: Mapped[dict[str, Any]]  # image path relative to its folder -> {score: limit}

    suite: Mapped[Suite] = relationship(lazy="joined")


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(_one_of("rule", ALERT_RULES), name="rule"),
        CheckConstraint(_one_of("state", ALERT_STATES), name="state"),
        Index("ix_alerts_suite_id_rule_state", "suite_id", "rule", "state"),
        Index(
            "uq_alerts_open_fingerprint",
            "fingerprint",
            unique=True,
            postgresql_where=OPEN_ALERT,
            sqlite_where=OPEN_ALERT,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rule: Mapped[str]
    suite_id: Mapped[int] = mapped_column(ForeignKey("suites.id"))
    fingerprint: Mapped[str]
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(default=dict)  # what changes run to run (worst image)
    state: Mapped[str] = mapped_column(default="open")
    value: Mapped[float | None]
    threshold: Mapped[float | None]
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_notified_at: Mapped[datetime | None]

    suite: Mapped[Suite] = relationship(lazy="joined")
    run: Mapped[Run | None] = relationship()  # the last run that raised it: its policy sets the cooldown


class Worker(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(primary_key=True)
    last_seen: Mapped[datetime]
    hostname: Mapped[str]
    pid: Mapped[int]


class StoreIdentity(Base):
    """One row: this database's random key, written by its migration. It names the broker queue."""

    __tablename__ = "store_identity"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str]
    created_at: Mapped[datetime]


class Approval(Base):
    """One file of an approved run: its candidate replaced the reference (`lpips-gate approve`). The
    sha256s say what was replaced by what (`sha256_before` is NULL for a new frame)."""

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    ref: Mapped[str]
    cand: Mapped[str]
    sha256_before: Mapped[str | None]
    sha256_after: Mapped[str]
    approved_at: Mapped[datetime] = mapped_column(default=utcnow)
    approved_by: Mapped[str | None]
