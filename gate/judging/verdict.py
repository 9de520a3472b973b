"""Judging a finished run: store rows -> RunSummary -> verdict, conditions and the alert lifecycle,
and the run summary every reader shows (`wait`, `check`, later the HTTP API).

One policy judges a run whoever looks first (gate.judging.policy.effective_policy): the one it
records, else the gate daemon's. Evaluation is idempotent: the verdict is computed from the rows
every time, but only the first evaluation records it, with the policy and its hash, and applies its
conditions to the alerts (the daemon, `check` and `wait` may race for the same run). `judge_run` is
what they call: it judges in a transaction of its own and tells the webhook once that has committed.
Thresholds the policy leaves unset come from the suite's newest calibration for the backbone that
scored the pair (gate.calibration); the calibrations used are recorded with the verdict, so a newer
one never changes how a judged run is shown. Drift is judged per (net, weights_version) on the
suite's most recent distances up to this run, against a trailing baseline just before them or a
pinned run's distances."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gate.alerts import lifecycle as alerts
from gate.calibration import store as calibrations
from gate.calibration.store import Calibration
from gate.errors import GateError
from gate.judging.drift import DriftResult, detect
from gate.judging.pairs import Judgement
from gate.judging.policy import (
    LIMITS,
    DriftPolicy,
    Policy,
    PolicySet,
    SuitePolicies,
    effective_policy,
    policy_hash,
    with_overrides,
)
from gate.judging.results import LayerResult, PairResult
from gate.judging.rules import Lookup, RunSummary, evaluate, verdicts
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import session_scope
from gate.store.models import Comparison, LayerMetric, Run
from gate.vocabulary import STAT_KEYS, UNPAIRED

SHOWN_NAMES = 5  # frames named in a run's reason; the pairs list them all


class EvaluationError(GateError, ValueError):
    """The run cannot be judged as configured (no policy, no threshold, a pinned baseline that is not there)."""


@dataclass(frozen=True)
class Evaluation:
    summary: dict[str, Any]  # see run_summary
    notices: tuple[alerts.Notice, ...] = ()  # owed to the webhook once the transaction commits


def judge_run(engine: Engine, *, run_id: int, policies: PolicySet | None, settings: Settings) -> dict[str, Any]:
    """Judge run `run_id` in a transaction of its own and tell the webhook after it commits, so other
    judges of the run never wait on the receiver. `policies` (the daemon's) judge it only when it
    records no policy of its own; None judges only runs that do. Returns the run summary."""
    with session_scope(engine) as session:
        evaluation = evaluate_run(session, run_id=run_id, policies=policies, settings=settings)
    alerts.deliver(engine, evaluation.notices, settings=settings)
    return evaluation.summary


def evaluate_run(session: Session, *, run_id: int, policies: PolicySet | None, settings: Settings) -> Evaluation:
    """Judge run `run_id` in the caller's transaction; the first evaluation records the verdict and
    its policy, applies the alerts and returns what they owe the webhook (for `alerts.deliver` after
    commit). A run judged before keeps its verdict and policy."""
    run = repo.get_run(session, run_id=run_id)
    policy = effective_policy(run, policies)
    if policy is None:
        raise EvaluationError(f"run {run_id}: no policy of its own: the gate daemon judges it by its policies")
    pairs = pair_results(session, run_id=run_id)
    calibrated = _newest_calibrations(session, suite=run.suite.name, pairs=pairs)
    lookup = pair_policies(run, policy, calibrated)
    try:
        judged = verdicts(pairs, lookup, primary=run.net, missing=missing_mode(run))
    except ValueError as exc:
        raise EvaluationError(f"run {run_id}: {exc}") from exc
    first = repo.record_verdict(session, run_id=run_id, verdict=judged.verdict,
                                policy=policy.model_dump(mode="json"), policy_hash=policy_hash(policy),
                                calibration_ids=[calibration.id for calibration in calibrated])
    session.refresh(run)  # what is recorded: this evaluation's verdict and policy, or the first one's
    summary = _summary(session, run, pairs)
    if not first:
        return Evaluation(summary)
    drift = drift_by_net(session, run=run, pairs=pairs, lookup=lookup)
    conditions = evaluate(RunSummary(run.suite.name, pairs, drift=drift), lookup)
    changes = alerts.apply(session, run_id=run_id, suite=run.suite.name, conditions=conditions, meta=run.meta)
    cooldown = alerts.cooldown_from(PolicySet() if policies is None else policies)
    return Evaluation(summary, alerts.owed(session, settings=settings, cooldown=cooldown, alerts=changes.touched))


def pair_policies(run: Run, policy: SuitePolicies, calibrated: Iterable[Calibration] = ()) -> Lookup:
    """The one place a pair's policy is built: the run's policy for the backbone that scored the pair
    and for its image (its path relative to the candidate folder), the run's own net being the
    primary; the limits it leaves unset come from the calibration for that backbone (per image where
    one was learnt). Built once per (net, weights version, image)."""
    cand_dir = run.options.get("cand_dir")
    by_backbone = {(calibration.net, calibration.weights_version): calibration for calibration in calibrated}
    built: dict[tuple[str, str, str], Policy] = {}

    def lookup(net: str, weights_version: str, cand: str) -> Policy:
        key = (net, weights_version, cand)
        if key not in built:
            image = relative_image(cand, cand_dir)
            explicit = policy.policy_for(net, weights_version, image, primary=run.net)
            calibration = by_backbone.get((net, weights_version))
            built[key] = explicit if calibration is None else with_calibration(explicit, calibration.limits(image))
        return built[key]

    return lookup


def relative_image(cand: str, cand_dir: str | None) -> str:
    """A candidate's path relative to its folder, as image rules match it (`cand_dir`, relative to
    the image root, is recorded with the run; older runs match the path under the root)."""
    if not cand_dir or cand_dir == ".":
        return cand
    return cand.removeprefix(cand_dir.rstrip("/") + "/")


def run_summary(session: Session, run_id: int) -> dict[str, Any]:
    """The run as every reader shows it: {"run", "suite", "verdict", "policy" (the hash of the policy
    that produced the verdict), "net" (the run's), "weights_version" (of the first pair its net scored, else any),
    "meta" (as submitted), "reasons" (why new or missing frames fail the run), "warnings" (new or
    missing frames let pass), "pairs": [{"ref", "cand", "name" (the path relative to the candidate
    folder: stable across checkouts), "status" (the comparison's: done, error, new, missing...),
    "verdict" (the pair's), "distance", "error" (the comparison's, else why the pair could not be
    judged), "scores" (by name; None where the worker stored none), "reasons" (the failed rules, or
    why it is an error), "where" ([x, y, w, h] of the first failed rule with a location, else None),
    "seconds" (decoding and model time), "warning"}]}. Verdicts, reasons, warnings and hash are empty
    until judged; pair verdicts also for runs judged before runs recorded their policy. NotFound for
    an unknown run."""
    run = repo.get_run(session, run_id=run_id)
    return _summary(session, run, pair_results(session, run_id=run_id, with_layers=False))


def _summary(session: Session, run: Run, pairs: tuple[PairResult, ...]) -> dict[str, Any]:
    judged = judgements(session, run, pairs)
    cand_dir = run.options.get("cand_dir")
    shown = [_pair_summary(pair, judgement, cand_dir) for pair, judgement in zip(pairs, judged, strict=True)]
    failing = [pair for pair in shown if pair["status"] in UNPAIRED and pair["verdict"] == "fail"]
    scored = sorted((pair for pair in pairs if pair.scored), key=lambda pair: pair.net != run.net)  # its own first

    return {"run": run.id, "suite": run.suite.name, "verdict": run.verdict, "policy": run.policy_hash,
            "net": run.net, "weights_version": scored[0].weights_version if scored else None,
            "meta": dict(run.meta or {}),
            "reasons": [_unpaired_reason(status, [p["name"] for p in failing if p["status"] == status])
                        for status in UNPAIRED if any(p["status"] == status for p in failing)],
            "warnings": [f"{pair['name']}: {pair['warning']}" for pair in shown if pair["warning"]],
            "pairs": shown}


def _unpaired_reason(status: str, names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES]) + (", ..." if len(names) > SHOWN_NAMES else "")
    return f"{len(names)} {status} frame(s) (missing=fail): {shown}"


def judgements(session: Session, run: Run, pairs: tuple[PairResult, ...]) -> list[Judgement | None]:
    """Each pair's judgement by the policy and calibrations recorded with the run's verdict, so they
    agree with it; None for a run not judged yet (or judged before runs recorded their policy)."""
    lookup = recorded_lookup(session, run)
    if lookup is None:
        return [None] * len(pairs)
    judged = verdicts(pairs, lookup, primary=run.net, missing=missing_mode(run))
    return [judgement for _pair, judgement in judged.judged]


def missing_mode(run: Run) -> str:
    """What the run's new and missing frames do to its verdict (runs before the option: fail)."""
    return str(run.options.get("missing", "fail"))


def _pair_summary(pair: PairResult, judgement: Judgement | None, cand_dir: str | None) -> dict[str, Any]:
    where = None if judgement is None else judgement.where
    return {"ref": pair.ref, "cand": pair.cand, "name": relative_image(pair.cand, cand_dir), "status": pair.status,
            "verdict": None if judgement is None else judgement.verdict, "distance": pair.distance,
            "error": pair.error or (None if judgement is None else judgement.error),
            "scores": dict(pair.scores) if pair.scores else None,
            "reasons": [] if judgement is None else judgement.reasons,
            "where": None if where is None else list(where), "seconds": pair.seconds,
            "warning": None if judgement is None else judgement.warning}


def recorded_lookup(session: Session, run: Run) -> Lookup | None:
    """What judged `run`: the policy recorded with its verdict, filled by the calibrations recorded
    with it; None before it is judged (and for runs judged before runs recorded their policy)."""
    if run.verdict is None or run.policy is None:
        return None
    return pair_policies(run, SuitePolicies.model_validate(run.policy),
                         calibrations.by_ids(session, run.calibration_ids or ()))


def with_calibration(policy: Policy, limits: Mapping[str, float]) -> Policy:
    """`policy` with calibrated limits (score -> limit) in the fields it leaves unset: explicit fields,
    --threshold among them, win. A score without a Policy field is not judged by this policy."""
    unset = {
        field: limits[score]
        for score, field in LIMITS.items()
        if score in limits and getattr(policy, field) is None
    }
    return with_overrides(policy, **unset) if unset else policy


def _newest_calibrations(session: Session, *, suite: str, pairs: tuple[PairResult, ...]) -> list[Calibration]:
    """The newest calibration of the suite for each backbone that scored a pair."""
    found = (
        calibrations.latest(session, suite=suite, net=net, weights_version=version)
        for net, version in sorted({pair.backbone for pair in pairs if pair.scored})
    )
    return [calibration for calibration in found if calibration is not None]


def pair_results(session: Session, *, run_id: int, with_layers: bool = True) -> tuple[PairResult, ...]:
    """The run's comparisons, with their layers unless a verdict is all that is wanted; NULL
    statistics are the non-finite ones."""
    layers: dict[int, list[LayerResult]] = defaultdict(list)
    for row in repo.layer_metrics(session, run_id=run_id) if with_layers else ():
        layers[row.comparison_id].append(_layer_result(row))
    return tuple(_pair_result(c, layers[c.id]) for c in repo.list_comparisons(session, run_id=run_id))


def _pair_result(comparison: Comparison, layers: list[LayerResult]) -> PairResult:
    return PairResult(
        ref=comparison.ref,
        cand=comparison.cand,
        status=comparison.status,
        distance=comparison.distance,
        error=comparison.error,
        net=comparison.net,
        weights_version=comparison.weights_version,
        layers=tuple(layers),
        scores=comparison.scores or {},
        regions=comparison.regions or {},
        seconds=None if comparison.decode_ms is None or comparison.model_ms is None
        else (comparison.decode_ms + comparison.model_ms) / 1e3,
    )


def _layer_result(row: LayerMetric) -> LayerResult:
    return LayerResult(
        index=row.layer_index,
        name=row.name,
        distance=row.distance,
        ref_stats={key: getattr(row, f"ref_{key}") for key in STAT_KEYS},
        cand_stats={key: getattr(row, f"cand_{key}") for key in STAT_KEYS},
    )


def drift_by_net(
    session: Session, *, run: Run, pairs: tuple[PairResult, ...], lookup: Lookup
) -> dict[tuple[str, str], DriftResult]:
    """One drift check per (net, weights_version) that scored a pair of this run."""
    scored = sorted({pair.backbone for pair in pairs if pair.scored})
    return {
        (net, version): _drift(session, run=run, net=net, version=version, policy=lookup(net, version, "").drift)
        for net, version in scored
    }


def _drift(session: Session, *, run: Run, net: str, version: str, policy: DriftPolicy) -> DriftResult:
    """Newest first: the first `window` distances are judged, the next `baseline_size` are the
    trailing baseline, unless the policy pins a run as the baseline."""

    def newest_first(limit: int, exclude_run_id: int | None = None) -> list[float]:
        return repo.recent_distances(session, suite_name=run.suite.name, net=net, weights_version=version,
                                     up_to_run_id=run.id, limit=limit, exclude_run_id=exclude_run_id)

    if policy.pinned_run is not None:  # baseline "pinned": the policy requires the run with it
        baseline = _pinned_distances(session, run_id=policy.pinned_run, net=net, version=version)
        recent = newest_first(policy.window, exclude_run_id=policy.pinned_run)
    else:
        newest = newest_first(policy.window + policy.baseline_size)
        recent, baseline = newest[: policy.window], newest[policy.window :]
    return detect(baseline[::-1], recent[::-1], policy)


def _pinned_distances(session: Session, *, run_id: int, net: str, version: str) -> list[float]:
    if session.get(Run, run_id) is None:
        raise EvaluationError(f"policy drift.pinned_run: run {run_id}: no such run")
    return [
        c.distance
        for c in repo.list_comparisons(session, run_id=run_id)
        if c.status == "done" and c.distance is not None and (c.net, c.weights_version) == (net, version)
    ]


def judge_if_possible(engine: Engine, *, run_id: int, settings: Settings) -> None:
    """`wait`: judge a finished run that records its own policy, so it has a verdict as soon as it is
    seen to finish; the others stay pending for the gate daemon, as does one its policy cannot judge."""
    with suppress(EvaluationError):
        judge_run(engine, run_id=run_id, policies=None, settings=settings)
