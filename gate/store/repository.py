"""Store operations: keyword-only, a Session first, a few statements each. Callers own the
transaction (see `session_scope`). State changes are single UPDATE ... WHERE ... RETURNING statements,
so two workers racing for one row never both win; inserts that may repeat use ON CONFLICT DO NOTHING."""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import String, Table, bindparam, cast, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gate.store.models import (
    Comparison,
    LayerMetric,
    Run,
    StoreIdentity,
    Suite,
    Worker,
    utcnow,
)
from gate.vocabulary import COMPARISON_STATUSES, STAT_KEYS, VERDICTS


class NotFound(LookupError):
    """A run or comparison id that is not in the database."""


def insert_for(session: Session, model: type) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise ValueError(f"database dialect {dialect!r}: only postgresql and sqlite are supported")
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def finite_or_none(value: float | None) -> float | None:
    """NaN/inf become NULL on both dialects (SQLite would store NaN as NULL anyway)."""
    return None if value is None or not math.isfinite(value) else float(value)


# --- suites and runs ---------------------------------------------------------------------------


def get_or_create_suite(session: Session, *, name: str) -> Suite:
    if not name:
        raise ValueError("suite name: must not be empty")
    stmt = insert_for(session, Suite).values(name=name, created_at=utcnow())
    session.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(select(Suite).where(Suite.name == name)).one()


def create_run(
    session: Session,
    *,
    suite_name: str,
    pairs: Sequence[tuple[str, str]],
    net: str,
    version: str,
    precision: str,
    threshold: float | None = None,
    options: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
    meta: Mapping[str, str] | None = None,
) -> Run:
    """A run and its comparisons, all queued; a pair given twice is stored once. `policy`, when its
    submitter gives one, is what judges it (gate.judging.policy.SuitePolicies as JSON)."""
    _check_pairs(pairs)
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold: must be a finite number >= 0, got {threshold!r}")
    suite = get_or_create_suite(session, name=suite_name)
    run = Run(
        suite=suite,
        net=net,
        version=version,
        precision=precision,
        threshold=threshold,
        options=dict(options or {}),
        policy=None if policy is None else dict(policy),
        meta=dict(meta or {}),
    )
    session.add(run)
    session.flush()
    stmt = insert_for(session, Comparison).on_conflict_do_nothing(index_elements=["run_id", "ref", "cand"])
    now = utcnow()
    session.execute(
        stmt,
        [
            {"run_id": run.id, "ref": ref, "cand": cand, "status": "queued", "attempts": 0, "queued_at": now}
            for ref, cand in pairs
        ],
    )
    return run


def _check_pairs(pairs: Sequence[tuple[str, str]]) -> None:
    if not pairs:
        raise ValueError("pairs: a run needs at least one (ref, cand) pair")
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(path, str) and path for path in pair):
            raise ValueError(f"pairs[{i}]: expected (ref, cand) as two non-empty strings, got {pair!r}")


def get_run(session: Session, *, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id}: no such run")
    return run


def set_verdict(session: Session, *, run_id: int, verdict: str | None) -> None:
    if verdict is not None and verdict not in VERDICTS:
        raise ValueError(f"verdict: must be one of {VERDICTS} or None, got {verdict!r}")
    evaluated_at = None if verdict is None else utcnow()
    stmt = update(Run).where(Run.id == run_id).values(verdict=verdict, evaluated_at=evaluated_at)
    if session.execute(stmt.returning(Run.id)).first() is None:
        raise NotFound(f"run {run_id}: no such run")


def record_verdict(
    session: Session, *, run_id: int, verdict: str, policy: Mapping[str, Any], policy_hash: str,
    calibration_ids: Sequence[int] = (),
) -> bool:
    """Set the verdict of a run not yet judged, with the policy that produced it, its hash and the
    calibrations that filled what it leaves unset (none: NULL); False when another evaluation already
    set them, so exactly one evaluator applies the run's alerts and the first verdict and policy stay."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict: must be one of {VERDICTS}, got {verdict!r}")
    stmt = (
        update(Run)
        .where(Run.id == run_id, Run.verdict.is_(None))
        .values(verdict=verdict, evaluated_at=utcnow(), policy=dict(policy), policy_hash=policy_hash,
                calibration_ids=list(calibration_ids) or None)
        .returning(Run.id)
    )
    if session.execute(stmt).first() is not None:
        return True
    get_run(session, run_id=run_id)
    return False


def runs_to_evaluate(session: Session) -> list[int]:
    """Runs without a verdict whose comparisons have all finished (done or error), oldest first."""
    unfinished = exists().where(Comparison.run_id == Run.id, Comparison.status.in_(("queued", "running")))
    stmt = select(Run.id).where(Run.verdict.is_(None), ~unfinished).order_by(Run.id)
    return list(session.scalars(stmt))


# --- the comparison queue ----------------------------------------------------------------------


def _orphaned(older_than: timedelta) -> Any:
    """Running, but its worker's heartbeat is stale (or it never sent one and the claim is old)."""
    cutoff = utcnow() - older_than
    known = exists().where(Worker.name == Comparison.worker)
    stale = exists().where(Worker.name == Comparison.worker, Worker.last_seen < cutoff)
    return (Comparison.status == "running") & (stale | (~known & (Comparison.claimed_at < cutoff)))


def claim_comparisons(
    session: Session,
    *,
    ids: Sequence[int],
    worker: str,
    max_attempts: int,
    orphan_after: timedelta | None = None,
) -> list[Comparison]:
    """Move the queued ones among `ids` to running for `worker` and return them (by id). With
    `orphan_after`, running rows whose worker stopped heartbeating that long ago are claimable too.
    One that already used `max_attempts` is recorded as an error instead (a poison input)."""
    if not worker:
        raise ValueError("worker: must not be empty")
    if max_attempts < 1:
        raise ValueError(f"max_attempts: must be >= 1, got {max_attempts}")
    takeable = Comparison.status == "queued"
    if orphan_after is not None:
        takeable = takeable | _orphaned(orphan_after)
    claimable = Comparison.id.in_(ids) & takeable
    now = utcnow()
    given_up = (
        "gave up after "
        + cast(Comparison.attempts, String)
        + " attempts: "
        + func.coalesce(Comparison.error, "no error recorded")
    )
    session.execute(
        update(Comparison)
        .where(claimable, Comparison.attempts >= max_attempts)
        .values(status="error", error=given_up, finished_at=now)
    )
    claimed = session.scalars(
        update(Comparison)
        .where(claimable, Comparison.attempts < max_attempts)
        .values(status="running", attempts=Comparison.attempts + 1, worker=worker, claimed_at=now)
        .returning(Comparison),
        execution_options={"populate_existing": True},
    )
    return sorted(claimed, key=lambda comparison: comparison.id)


RESULT_FIELDS = ("distance", "net", "weights_version", "precision", "decode_ms", "model_ms", "heatmap_png", "scores",
                 "regions", "ref_sha256", "cand_sha256")


def record_result(
    session: Session,
    *,
    comparison_id: int,
    distance: float,
    net: str,
    weights_version: str,
    precision: str,
    layers: Sequence[Mapping[str, Any]],
    decode_ms: float | None = None,
    model_ms: float | None = None,
    heatmap_png: bytes | None = None,
    scores: Mapping[str, float] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> bool:
    """Store a finished comparison once: a repeat delivery of a done comparison writes nothing and
    returns False. `scores` by name (non-finite ones stored as null), `regions` [x, y, w, h] by name."""
    result = dict(comparison_id=comparison_id, distance=distance, net=net, weights_version=weights_version,
                  precision=precision, layers=layers, decode_ms=decode_ms, model_ms=model_ms, heatmap_png=heatmap_png,
                  scores=scores, regions=regions)
    return record_results(session, results=[result])[0]


def record_results(session: Session, *, results: Sequence[Mapping[str, Any]]) -> list[bool]:
    """`record_result` for many comparisons in three statements whatever their number (a worker's
    batch is one commit): lock the rows, update those not done yet, insert their layers. Each result
    holds record_result's keyword arguments; returns, per result, whether it was written."""
    if not results:
        return []
    layer_rows = {r["comparison_id"]: [_layer_row(r["comparison_id"], i, x) for i, x in enumerate(r["layers"])]
                  for r in results}
    locked = select(Comparison.id, Comparison.status).where(Comparison.id.in_(layer_rows)).order_by(Comparison.id)
    status = {row.id: row.status for row in session.execute(locked.with_for_update())}  # id order: no deadlocks
    written = []
    for comparison_id in (r["comparison_id"] for r in results):
        if comparison_id not in status:
            raise NotFound(f"comparison {comparison_id}: no such comparison")
        written.append(status[comparison_id] != "done")
        status[comparison_id] = "done"  # the same id twice is written once
    todo = [r for r, new in zip(results, written) if new]
    if not todo:
        return written
    table = typing.cast(Table, Comparison.__table__)  # a mapped class's table is a Table
    fields: dict[str, Any] = {key: bindparam(f"new_{key}") for key in RESULT_FIELDS}
    update_done = (
        update(table)
        .where(table.c.id == bindparam("new_id"))
        .values(status="done", error=None, finished_at=utcnow(), **fields)
    )
    session.execute(
        update_done,
        [
            {"new_id": r["comparison_id"], **{f"new_{key}": r.get(key) for key in RESULT_FIELDS},
             "new_distance": finite_or_none(r["distance"]), "new_scores": _scores(r.get("scores")),
             "new_regions": _regions(r.get("regions"))}
            for r in todo
        ],
    )
    rows = [row for r in todo for row in layer_rows[r["comparison_id"]]]
    if rows:
        conflict = ["comparison_id", "layer_index"]
        session.execute(insert_for(session, LayerMetric).on_conflict_do_nothing(index_elements=conflict), rows)
    return written


def _scores(scores: Mapping[str, float] | None) -> dict[str, float | None] | None:
    """JSON has no NaN: a non-finite score is stored as null."""
    return None if scores is None else {name: finite_or_none(value) for name, value in scores.items()}


def _regions(regions: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]] | None:
    return None if regions is None else {name: [int(v) for v in box] for name, box in regions.items()}


def _layer_row(comparison_id: int, position: int, layer: Mapping[str, Any]) -> dict[str, Any]:
    try:
        row = {
            "comparison_id": comparison_id,
            "layer_index": int(layer["index"]),
            "name": layer["name"],
            "distance": finite_or_none(layer["distance"]),
        }
        for side in ("ref", "cand"):
            stats = layer[f"{side}_stats"]
            row |= {f"{side}_{key}": finite_or_none(stats[key]) for key in STAT_KEYS if key != "nonfinite"}
            row[f"{side}_nonfinite"] = int(stats["nonfinite"])
    except KeyError as exc:
        raise ValueError(f"layers[{position}]: missing key {exc.args[0]!r}") from exc
    return row


def record_error(session: Session, *, comparison_id: int, reason: str, final: bool) -> bool:
    """A failed attempt: `final` ends the comparison as an error, otherwise it is queued again
    (attempts kept, so `claim_comparisons` can give up on it). A done comparison is left alone."""
    values: dict[str, Any] = (
        {"status": "error", "finished_at": utcnow()} if final else {"status": "queued", "queued_at": utcnow()}
    )
    stmt = (
        update(Comparison)
        .where(Comparison.id == comparison_id, Comparison.status != "done")
        .values(error=reason, **values)
    )
    if session.execute(stmt.returning(Comparison.id)).first() is None:
        _require_comparison(session, comparison_id)
        return False
    return True


def _require_comparison(session: Session, comparison_id: int) -> None:
    if session.get(Comparison, comparison_id) is None:
        raise NotFound(f"comparison {comparison_id}: no such comparison")


def stale_queued(session: Session, *, older_than: timedelta, limit: int) -> list[int]:
    """Queued comparisons nobody picked up for `older_than` since they (last) went to the queue:
    their message may be lost."""
    since = func.coalesce(Comparison.queued_at, Comparison.claimed_at, Run.created_at)
    stmt = (
        select(Comparison.id)
        .join(Run, Comparison.run_id == Run.id)
        .where(Comparison.status == "queued", since < utcnow() - older_than)
        .order_by(Comparison.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def running_under(session: Session, *, worker: str, ids: Sequence[int] | None = None) -> list[Comparison]:
    """Comparisons this worker holds: what it must finish or hand back."""
    stmt = select(Comparison).where(Comparison.status == "running", Comparison.worker == worker)
    if ids is not None:
        stmt = stmt.where(Comparison.id.in_(ids))
    return list(session.scalars(stmt.order_by(Comparison.id)))


def requeue_orphans(session: Session, *, older_than: timedelta) -> list[int]:
    """Running comparisons whose worker went silent go back to the queue; the caller re-enqueues
    the returned ids."""
    stmt = (
        update(Comparison)
        .where(_orphaned(older_than))
        .values(status="queued", queued_at=utcnow(), error="worker " + Comparison.worker + " stopped heartbeating")
        .returning(Comparison.id)
    )
    return sorted(session.scalars(stmt))


def store_key(session: Session) -> str:
    """This database's random key (written by its migration); LookupError if the row is missing."""
    key = session.scalar(select(StoreIdentity.key).where(StoreIdentity.id == 1))
    if key is None:
        raise LookupError("the store_identity row is missing")
    return key


def heartbeat(session: Session, *, worker: str, hostname: str, pid: int) -> None:
    values = {"name": worker, "hostname": hostname, "pid": pid, "last_seen": utcnow()}
    stmt = insert_for(session, Worker).values(values)
    session.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))


# --- reading results ---------------------------------------------------------------------------


def run_progress(session: Session, *, run_id: int) -> dict[str, int]:
    """Comparisons per status; every status is present, zero included."""
    stmt = (
        select(Comparison.status, func.count()).where(Comparison.run_id == run_id).group_by(Comparison.status)
    )
    counts: dict[str, int] = dict(session.execute(stmt).all())
    return {status: counts.get(status, 0) for status in COMPARISON_STATUSES}


def list_comparisons(session: Session, *, run_id: int) -> list[Comparison]:
    return list(
        session.scalars(select(Comparison).where(Comparison.run_id == run_id).order_by(Comparison.id))
    )


def layer_metrics(session: Session, *, run_id: int) -> list[LayerMetric]:
    """Every layer row of the run, by comparison then layer."""
    stmt = (
        select(LayerMetric)
        .join(Comparison, LayerMetric.comparison_id == Comparison.id)
        .where(Comparison.run_id == run_id)
        .order_by(LayerMetric.comparison_id, LayerMetric.layer_index)
    )
    return list(session.scalars(stmt))


def run_distances(session: Session, *, run_id: int) -> list[float]:
    """Distances of the run's done comparisons, by comparison id."""
    stmt = (
        select(Comparison.distance)
        .where(Comparison.run_id == run_id, Comparison.status == "done", Comparison.distance.is_not(None))
        .order_by(Comparison.id)
    )
    return list(session.scalars(stmt))


def recent_distances(
    session: Session,
    *,
    suite_name: str,
    net: str,
    weights_version: str,
    limit: int,
    exclude_run_id: int | None = None,
    up_to_run_id: int | None = None,
) -> list[float]:
    """The drift baseline: done distances of the suite produced by this net and weights, newest runs
    first, at most `limit`; `exclude_run_id` leaves out the run being judged, `up_to_run_id` the runs
    after it (so re-judging an old run sees what it saw then)."""
    if limit < 1:
        raise ValueError(f"limit: must be >= 1, got {limit}")
    stmt = (
        select(Comparison.distance)
        .join(Run, Comparison.run_id == Run.id)
        .join(Suite, Run.suite_id == Suite.id)
        .where(
            Suite.name == suite_name,
            Comparison.status == "done",
            Comparison.distance.is_not(None),
            Comparison.net == net,
            Comparison.weights_version == weights_version,
        )
        .order_by(Run.created_at.desc(), Run.id.desc(), Comparison.id)
        .limit(limit)
    )
    if exclude_run_id is not None:
        stmt = stmt.where(Run.id != exclude_run_id)
    if up_to_run_id is not None:
        stmt = stmt.where(Run.id <= up_to_run_id)
    return list(session.scalars(stmt))
