"""A suite over time, for the HTTP API's trend and the suite page's plot: each run's mean and worst
distance and verdict, the calibrated thresholds that apply to the suite's net, the drift alerts it
raised and which runs form the drift baseline of its newest judged run."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gate.calibration import store as calibrations
from gate.judging.policy import DriftPolicy, SuitePolicies
from gate.store.models import Alert, Comparison, Run, Suite
from gate.store.repository import NotFound

TREND_RUNS = 200  # the newest runs a trend shows


def suite_trend(session: Session, *, suite: str, limit: int = TREND_RUNS) -> dict[str, Any]:
    """{"suite", "runs": [{"run", "created_at", "verdict", "net", "pairs", "mean", "max"}] oldest first,
    "calibrations": [the newest per net of its runs, with its thresholds], "drift": {"alerts": [...],
    "baseline_runs": [...], "window", "baseline_size"}}. NotFound for a suite that does not exist."""
    if session.scalars(select(Suite.id).where(Suite.name == suite)).first() is None:
        raise NotFound(f"suite {suite!r}: no such suite")
    done = (Comparison.status == "done") & Comparison.distance.is_not(None)
    stmt = (
        select(Run.id, Run.created_at, Run.verdict, Run.net, Run.policy, func.count(Comparison.id).label("pairs"),
               func.avg(Comparison.distance).filter(done).label("mean"),
               func.max(Comparison.distance).filter(done).label("worst"),
               func.count(Comparison.id).filter(done).label("scored"))
        .join(Suite, Run.suite_id == Suite.id)
        .outerjoin(Comparison, Comparison.run_id == Run.id)
        .where(Suite.name == suite)
        .group_by(Run.id)
        .order_by(Run.id.desc())
        .limit(limit)
    )
    rows = list(session.execute(stmt))[::-1]
    runs = [{"run": row.id, "created_at": row.created_at.isoformat(), "verdict": row.verdict, "net": row.net,
             "pairs": row.pairs, "scored": row.scored, "mean": None if row.mean is None else float(row.mean),
             "max": None if row.worst is None else float(row.worst)} for row in rows]
    nets = sorted({row["net"] for row in runs})
    newest = [calibration for calibration in calibrations.history(session, suite=suite) if calibration.net in nets]
    latest = {calibration.net: calibration for calibration in newest}  # history is oldest first: the last wins
    return {"suite": suite, "runs": runs,
            "calibrations": [latest[net].as_json() for net in sorted(latest)],
            "drift": {"alerts": _drift_alerts(session, suite), **_baseline(rows)}}


def _drift_alerts(session: Session, suite: str) -> list[dict[str, Any]]:
    stmt = (select(Alert).join(Suite, Alert.suite_id == Suite.id)
            .where(Suite.name == suite, Alert.rule == "drift").order_by(Alert.id))
    return [{"id": alert.id, "run": alert.run_id, "state": alert.state, "value": alert.value,
             "threshold": alert.threshold, "labels": alert.labels, "opened_at": alert.opened_at.isoformat(),
             "resolved_at": None if alert.resolved_at is None else alert.resolved_at.isoformat()}
            for alert in session.scalars(stmt)]


def _baseline(rows: list[Any]) -> dict[str, Any]:
    """The runs whose distances the newest judged run's drift check took as its baseline, by the drift
    policy it recorded: newest first, its first `window` distances are judged, the next
    `baseline_size` are the trailing baseline (or the pinned run)."""
    judged = [row for row in rows if row.policy is not None]
    if not judged:
        return {"baseline_runs": [], "window": None, "baseline_size": None}
    newest = judged[-1]
    policy: DriftPolicy = SuitePolicies.model_validate(newest.policy).policy_for(newest.net, "").drift
    if policy.pinned_run is not None:
        return {"baseline_runs": [policy.pinned_run], "window": policy.window, "baseline_size": None}
    seen, baseline = 0, []
    for row in reversed(rows):
        if row.id > newest.id or row.net != newest.net or not row.scored:
            continue
        if seen + row.scored > policy.window and seen < policy.window + policy.baseline_size:
            baseline.append(row.id)
        seen += row.scored
    return {"baseline_runs": sorted(baseline), "window": policy.window, "baseline_size": policy.baseline_size}
