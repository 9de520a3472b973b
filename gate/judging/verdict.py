"""Judging a finished run: store rows -> RunSummary -> verdict, conditions and the alert lifecycle.

Evaluation is idempotent: the verdict is computed from the rows every time, but only the first
evaluation records it and applies its conditions to the alerts (the daemon, `check` and `wait`
may race for the same run). `judge_run` is what they call: it judges in a transaction of its own
and tells the webhook once that has committed. Drift is judged per (net, weights_version) on the suite's most recent distances
up to this run, against a trailing baseline just before them or a pinned run's distances."""

from __future__ import annotations

from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gate.alerts import lifecycle as alerts
from gate.judging.drift import DriftResult, detect
from gate.judging.policy import DriftPolicy, Policy, PolicySet, policy_for, with_overrides
from gate.judging.rules import LayerResult, Lookup, PairResult, RunSummary, RunVerdict, evaluate, verdicts
from gate.errors import GateError
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import session_scope
from gate.store.models import STAT_KEYS, Comparison, LayerMetric, Run


class EvaluationError(GateError, ValueError):
    """The run cannot be judged as configured (no threshold, a pinned baseline that is not there)."""


@dataclass(frozen=True)
class Evaluation:
    summary: dict[str, Any]  # {"run", "suite", "verdict", "pairs": [{"ref", "cand", "status", "distance", "error"}]}
    notices: tuple[alerts.Notice, ...] = ()  # owed to the webhook once the transaction commits


def judge_run(engine: Engine, *, run_id: int, policies: PolicySet, settings: Settings) -> dict[str, Any]:
    """Judge run `run_id` in a transaction of its own and tell the webhook after it commits, so other
    judges of the run never wait on the receiver. Returns the summary (see Evaluation)."""
    with session_scope(engine) as session:
        evaluation = evaluate_run(session, run_id=run_id, policies=policies, settings=settings)
    alerts.deliver(engine, evaluation.notices, settings=settings)
    return evaluation.summary


def evaluate_run(session: Session, *, run_id: int, policies: PolicySet, settings: Settings) -> Evaluation:
    """Judge run `run_id` in the caller's transaction; the first evaluation records the verdict,
    applies the alerts and returns what they owe the webhook (for `alerts.deliver` after commit)."""
    run = repo.get_run(session, run_id=run_id)
    lookup = policy_lookup(policies, suite=run.suite.name, threshold=run.threshold)
    pairs = pair_results(session, run_id=run_id)
    try:
        judged = verdicts(pairs, lookup)
    except ValueError as exc:
        raise EvaluationError(f"run {run_id}: {exc}") from exc
    summary = summary_dict(run, judged)
    if not repo.record_verdict(session, run_id=run_id, verdict=judged.verdict):
        return Evaluation(summary)
    drift = drift_by_net(session, run=run, pairs=pairs, lookup=lookup)
    conditions = evaluate(RunSummary(run.suite.name, pairs, drift=drift), lookup)
    changes = alerts.apply(session, run_id=run_id, suite=run.suite.name, conditions=conditions)
    cooldown = alerts.cooldown_from(policies)
    return Evaluation(summary, alerts.owed(session, settings=settings, cooldown=cooldown, alerts=changes.touched))


def policy_lookup(policies: PolicySet, *, suite: str, threshold: float | None) -> Lookup:
    """The policy per (net, weights_version); a threshold given with the run overrides max_distance."""

    def lookup(net: str, weights_version: str) -> Policy:
        policy = policy_for(policies, suite=suite, net=net, weights_version=weights_version)
        return with_overrides(policy, max_distance=threshold)

    return lookup


def pair_results(session: Session, *, run_id: int) -> tuple[PairResult, ...]:
    """The run's comparisons with their layers; NULL statistics are the non-finite ones."""
    layers: dict[int, list[LayerResult]] = defaultdict(list)
    for row in repo.layer_metrics(session, run_id=run_id):
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
    scored = sorted({(pair.net, pair.weights_version) for pair in pairs if pair.scored})
    return {
        (net, version): _drift(session, run=run, net=net, version=version, policy=lookup(net, version).drift)
        for net, version in scored
    }


def _drift(session: Session, *, run: Run, net: str, version: str, policy: DriftPolicy) -> DriftResult:
    """Newest first: the first `window` distances are judged, the next `baseline_size` are the
    trailing baseline, unless the policy pins a run as the baseline."""
    query = {"suite_name": run.suite.name, "net": net, "weights_version": version, "up_to_run_id": run.id}
    if policy.baseline == "pinned":
        baseline = _pinned_distances(session, run_id=policy.pinned_run, net=net, version=version)
        recent = repo.recent_distances(session, **query, limit=policy.window, exclude_run_id=policy.pinned_run)
    else:
        newest = repo.recent_distances(session, **query, limit=policy.window + policy.baseline_size)
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


def summary_dict(run: Run, judged: RunVerdict) -> dict[str, Any]:
    pairs = [
        {"ref": pair.ref, "cand": pair.cand, "status": status, "distance": pair.distance, "error": pair.error}
        for pair, status in judged.pairs
    ]
    return {"run": run.id, "suite": run.suite.name, "verdict": judged.verdict, "pairs": pairs}


def judge_if_possible(engine: Engine, *, run_id: int, settings: Settings) -> None:
    """Judge a finished run with the default policies and its own threshold, so it has a verdict as
    soon as it is seen to finish; one that cannot be judged so (no threshold) is left pending."""
    with suppress(EvaluationError):
        judge_run(engine, run_id=run_id, policies=PolicySet(), settings=settings)
