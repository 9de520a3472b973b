"""Verdicts and alert conditions from a finished run: pure functions over plain dataclasses, so the
rules are tested without a database and the store stays a detail of the caller.

`policy` is a Policy, or a callable (net, weights_version) -> Policy: pairs scored by a fallback
backbone are then judged by that backbone's thresholds. Rules that were checked return a Condition
whether it fires or not, so the caller can resolve an alert when its condition clears."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gate.judging.drift import DriftResult
from gate.judging.policy import Policy
from gate.vocabulary import COMPARISON_STATUSES, STAT_KEYS

Verdict = Literal["pass", "fail", "error"]
Lookup = Callable[[str, str], Policy]  # (net, weights_version) -> the policy that judges it
PolicySource = Policy | Lookup
SIDES = ("ref", "cand")


@dataclass(frozen=True)
class LayerResult:
    """One backbone layer of a comparison; a statistic is None where it was not finite."""

    index: int
    name: str
    distance: float | None
    ref_stats: Mapping[str, float | int | None]
    cand_stats: Mapping[str, float | int | None]

    def __post_init__(self) -> None:
        for side in SIDES:
            missing = [key for key in STAT_KEYS if key not in self.stats(side)]
            if missing:
                raise ValueError(f"layer {self.name!r} {side}_stats: missing {', '.join(missing)}")

    def stats(self, side: str) -> Mapping[str, float | int | None]:
        return self.ref_stats if side == "ref" else self.cand_stats


@dataclass(frozen=True)
class PairResult:
    ref: str
    cand: str
    status: str
    distance: float | None
    error: str | None
    net: str | None  # the backbone that scored it; None when it never was
    weights_version: str | None
    layers: tuple[LayerResult, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in COMPARISON_STATUSES:
            raise ValueError(f"{self.label}: status {self.status!r} is not one of {', '.join(COMPARISON_STATUSES)}")
        if self.status == "done" and (self.net is None or self.weights_version is None):
            raise ValueError(f"{self.label}: a done comparison needs its net and weights_version")
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def label(self) -> str:
        return f"{self.ref} -> {self.cand}"

    @property
    def scored(self) -> bool:
        return self.status == "done" and self.distance is not None and math.isfinite(self.distance)

    @property
    def score(self) -> float:
        """The distance of a scored pair."""
        if self.distance is None or not self.scored:
            raise ValueError(f"{self.label}: not scored ({self.status})")
        return self.distance

    @property
    def backbone(self) -> tuple[str, str]:
        """(net, weights_version) that scored the pair: what its thresholds and drift are keyed by."""
        if self.net is None or self.weights_version is None:
            raise ValueError(f"{self.label}: never scored by any backbone")
        return self.net, self.weights_version


@dataclass(frozen=True)
class RunSummary:
    suite: str
    pairs: tuple[PairResult, ...]
    drift: Mapping[tuple[str, str], DriftResult] = field(default_factory=dict)  # by (net, weights_version)


@dataclass(frozen=True)
class RunVerdict:
    verdict: Verdict
    pairs: tuple[tuple[PairResult, Verdict], ...]


@dataclass(frozen=True)
class Condition:
    """One checked rule for one label set; `annotations` carry what changes run to run (the worst
    image), so the identity in `labels`, and hence the alert's fingerprint, stays stable."""

    rule: str
    labels: dict[str, str]
    value: float
    threshold: float
    firing: bool
    annotations: dict[str, str] = field(default_factory=dict)


def verdicts(pairs: Iterable[PairResult], policy: PolicySource) -> RunVerdict:
    """A run passes when every comparison passes; any error beats any failure."""
    pairs = tuple(pairs)
    if not pairs:
        raise ValueError("pairs: a run without comparisons cannot be judged")
    unfinished = [pair for pair in pairs if pair.status not in ("done", "error")]
    if unfinished:
        first = unfinished[0]
        raise ValueError(f"pairs: {len(unfinished)} comparison(s) not finished ({first.label} is {first.status})")
    lookup = _lookup(policy)
    judged = tuple((pair, _pair_verdict(pair, lookup)) for pair in pairs)
    found = {verdict for _, verdict in judged}
    verdict: Verdict = "error" if "error" in found else "fail" if "fail" in found else "pass"
    return RunVerdict(verdict, judged)


def _pair_verdict(pair: PairResult, lookup: Lookup) -> Verdict:
    if not pair.scored:
        return "error"
    threshold = lookup(*pair.backbone).max_distance
    if threshold is None:
        raise ValueError(
            f"no max_distance for net {pair.net!r} weights {pair.weights_version!r}: "
            "set it in the policy file or pass --threshold"
        )
    return "fail" if pair.score > threshold else "pass"


def _lookup(policy: PolicySource) -> Lookup:
    if isinstance(policy, Policy):
        return lambda net, weights_version: policy
    return policy


def evaluate(run: RunSummary, policy: PolicySource) -> list[Condition]:
    """Every checked condition of the run, firing or not, in a stable order."""
    lookup = _lookup(policy)
    return [
        *_distance_conditions(run, lookup),
        *_layer_conditions(run, lookup),
        *_drift_conditions(run, lookup),
    ]


def _distance_conditions(run: RunSummary, lookup: Lookup) -> list[Condition]:
    groups: dict[tuple[str, str], list[PairResult]] = defaultdict(list)
    for pair in run.pairs:
        if pair.scored:
            groups[pair.backbone].append(pair)
    conditions = []
    for (net, version), pairs in sorted(groups.items()):
        threshold = lookup(net, version).max_distance
        if threshold is None:
            continue  # no gate configured: nothing was checked
        worst = max(pairs, key=lambda pair: pair.score)
        failed = sum(pair.score > threshold for pair in pairs)
        conditions.append(
            Condition(
                "distance",
                {"suite": run.suite, "net": net, "weights_version": version},
                worst.score,
                threshold,
                failed > 0,
                {"worst_pair": worst.label, "failed": f"{failed} of {len(pairs)}"},
            )
        )
    return conditions


Sample = tuple[float, str]  # a statistic's value and the image it came from
LayerKey = tuple[str, str, int, str, str]  # net, weights version, layer index, layer name, side


@dataclass(frozen=True)
class _LayerRule:
    rule: str
    statistic: str
    worst: Callable[[list[Sample]], Sample]  # max or min over (value, image) samples
    limit: Callable[[Policy], float | None]  # None: the policy switches the rule off
    breaches: Callable[[float, float], bool]


_LAYER_RULES = (
    _LayerRule("sparsity", "sparsity", max, lambda policy: policy.max_sparsity, lambda v, limit: v > limit),
    _LayerRule("variance", "std", min, lambda policy: policy.min_std, lambda v, limit: v < limit),
    _LayerRule(
        "nonfinite",
        "nonfinite",
        max,
        lambda policy: None if policy.allow_nonfinite else 0,
        lambda v, limit: v > limit,
    ),
)


def _layer_conditions(run: RunSummary, lookup: Lookup) -> list[Condition]:
    samples = _layer_samples(run)
    conditions = []
    for rule in _LAYER_RULES:
        for (net, version, index, layer, side), values in sorted(samples[rule.statistic].items()):
            limit = rule.limit(lookup(net, version))
            if limit is None:
                continue
            value, image = rule.worst(values)
            labels = {"suite": run.suite, "net": net, "weights_version": version, "layer": layer, "side": side}
            annotations = {"image": image, "layer_index": str(index)}
            conditions.append(Condition(rule.rule, labels, value, limit, rule.breaches(value, limit), annotations))
    return conditions


def _layer_samples(run: RunSummary) -> dict[str, dict[LayerKey, list[Sample]]]:
    """statistic -> (net, version, layer index, layer name, side) -> [(value, image path)], finite values only."""
    samples: dict[str, dict[LayerKey, list[Sample]]] = {rule.statistic: defaultdict(list) for rule in _LAYER_RULES}
    for pair in run.pairs:
        if pair.status != "done":
            continue
        for layer in pair.layers:
            for side, image in (("ref", pair.ref), ("cand", pair.cand)):
                key = (*pair.backbone, layer.index, layer.name, side)
                for statistic, by_key in samples.items():
                    value = layer.stats(side)[statistic]
                    if value is not None:
                        by_key[key].append((value, image))
    return samples


def _drift_conditions(run: RunSummary, lookup: Lookup) -> list[Condition]:
    conditions = []
    for (net, version), result in sorted(run.drift.items()):
        if result.ks_p is None:
            continue  # too few samples to check: neither drifted nor cleared
        conditions.append(
            Condition(
                "drift",
                {"suite": run.suite, "net": net, "weights_version": version},
                result.ks_p,
                lookup(net, version).drift.ks_threshold,
                result.drifted,
                {
                    "summary": "; ".join(result.reasons) or "no drift",
                    "psi": f"{result.psi:.4g}",
                    "wasserstein": f"{result.wasserstein:.4g}",
                    "samples": f"{result.n_baseline} baseline, {result.n_recent} recent",
                },
            )
        )
    return conditions
