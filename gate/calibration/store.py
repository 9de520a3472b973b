"""Calibrations in the store: every one is kept, keyed by (suite, net, weights_version), and the
newest per key is the one that applies. `Calibration` is what judging reads: the limits for a pair."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gate.calibration.learn import Learnt
from gate.store import models
from gate.store import repository as repo


@dataclass(frozen=True)
class Calibration:
    id: int
    suite: str
    net: str
    weights_version: str
    created_at: datetime
    run_ids: tuple[int, ...]
    pairs: int
    margin: float
    thresholds: Mapping[str, float]  # score -> limit, for the suite
    per_image: Mapping[str, Mapping[str, float]]  # image path relative to its folder -> score -> limit

    def limits(self, cand: str) -> dict[str, float]:
        """score -> limit for a pair whose candidate (or reference) is at `cand`: the image's own limits
        where they were learnt, else the suite's. Stored paths carry their folder ("new/shots/a.png")
        and calibrations do not ("shots/a.png"): the longest learnt path that ends `cand`, component
        by component, is its image."""
        parts = PurePosixPath(cand).parts
        for start in range(len(parts)):
            own = self.per_image.get("/".join(parts[start:]))
            if own is not None:
                return {**self.thresholds, **own}
        return dict(self.thresholds)

    def as_json(self) -> dict[str, Any]:
        """What `calibrate --json` prints: the suite's limits by score; per_image is how many images got their own."""
        return {"suite": self.suite, "net": self.net, "weights_version": self.weights_version,
                "calibration": self.id, "created_at": self.created_at.isoformat(), "runs": list(self.run_ids),
                "pairs": self.pairs, "margin": self.margin, "thresholds": dict(self.thresholds),
                "per_image": len(self.per_image)}


def record(session: Session, *, suite: str, net: str, weights_version: str, run_ids: Sequence[int], pairs: int,
           margin: float, learnt: Learnt) -> Calibration:
    """Store a new calibration; older ones stay as history."""
    row = models.Calibration(suite=repo.get_or_create_suite(session, name=suite), net=net,
                             weights_version=weights_version, run_ids=list(run_ids), pairs=pairs, margin=margin,
                             thresholds=learnt.thresholds, per_image=learnt.per_image)
    session.add(row)
    session.flush()
    return _calibration(row)


def latest(session: Session, *, suite: str, net: str, weights_version: str) -> Calibration | None:
    """The calibration that applies to pairs of `suite` scored by `net` at `weights_version`: the newest."""
    stmt = (
        select(models.Calibration)
        .join(models.Suite)
        .where(models.Suite.name == suite, models.Calibration.net == net,
               models.Calibration.weights_version == weights_version)
        .order_by(models.Calibration.id.desc())  # the last stored, whatever the clocks of the machines said
        .limit(1)
    )
    row = session.scalars(stmt).first()
    return None if row is None else _calibration(row)


def history(session: Session, *, suite: str) -> list[Calibration]:
    """Every calibration of `suite`, oldest first."""
    stmt = (
        select(models.Calibration)
        .join(models.Suite)
        .where(models.Suite.name == suite)
        .order_by(models.Calibration.id)
    )
    return [_calibration(row) for row in session.scalars(stmt)]


def by_ids(session: Session, ids: Iterable[int]) -> list[Calibration]:
    """The calibrations a run recorded with its verdict, in id order."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    stmt = select(models.Calibration).where(models.Calibration.id.in_(wanted)).order_by(models.Calibration.id)
    return [_calibration(row) for row in session.scalars(stmt)]


def calibrated(session: Session, *, suite: str, net: str) -> bool:
    """Whether `suite` has a calibration for `net` (any weights version): `check` may then go without a threshold."""
    stmt = (
        select(models.Calibration.id)
        .join(models.Suite)
        .where(models.Suite.name == suite, models.Calibration.net == net)
        .limit(1)
    )
    return session.scalars(stmt).first() is not None


def _calibration(row: models.Calibration) -> Calibration:
    return Calibration(
        id=row.id,
        suite=row.suite.name,
        net=row.net,
        weights_version=row.weights_version,
        created_at=row.created_at,
        run_ids=tuple(row.run_ids),
        pairs=row.pairs,
        margin=row.margin,
        thresholds={score: float(limit) for score, limit in row.thresholds.items()},
        per_image={image: {score: float(limit) for score, limit in limits.items()}
                   for image, limits in row.per_image.items()},
    )
