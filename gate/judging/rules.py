"""Verdicts and alert conditions from a finished run: pure functions over the plain dataclasses of
gate.judging.results, so the rules are tested without a database.

`policy` is a Policy, or a Lookup (net, weights_version, cand) -> Policy: each pair is judged by the
policy of the backbone that scored it and of its image. Rules that were checked return a Condition
whether it fires or not, so the caller can resolve an alert when its condition clears."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gate.judging.drift import DriftResult
from gate.judging.pairs import (
    PAIR_RULES,
    Judgement,
    PairRule,
    Verdict,
    breaches,
    judge_pair,
    judge_unpaired,
    rule_value,
)
from gate.judging.policy import Policy
from gate.judging.results import SIDES, LayerResult, PairResult
from gate.vocabulary import FINISHED, UNPAIRED

Lookup = Callable[[str, str, str], Policy]  # (net, weights_version, cand) -> the policy that judges the pair
PolicySource = Policy | Lookup


@dataclass(frozen=True)
class RunSummary:
    suite: str
    pairs: tuple[PairResult, ...]
    drift: Mapping[tuple[str, str], DriftResult] = field(default_factory=dict)  # by (net, weights_version)


@dataclass(frozen=True)
class RunVerdict:
    verdict: Verdict
    judged: tuple[tuple[PairResult, Judgement], ...]

    @property
    def pairs(self) -> tuple[tuple[PairResult, Verdict], ...]:
        return tuple((pair, judgement.verdict) for pair, judgement in self.judged)


@dataclass(frozen=True)
class Condition:
    """One checked rule for one label set; `annotations` carry what changes run to run (the worst
    image, where in it), so the identity in `labels`, and hence the alert's fingerprint, stays stable."""

    rule: str
    labels: dict[str, str]
    value: float
    threshold: float
    firing: bool
    annotations: dict[str, str] = field(default_factory=dict)


def verdicts(pairs: Iterable[PairResult], policy: PolicySource, *, primary: str | None = None,
             missing: str = "fail") -> RunVerdict:
    """A run passes when every comparison passes; any error beats any failure. `primary` is the
    run's own net: a pair another net scored is judged on that net's scale (gate.judging.pairs).
    New and missing frames are judged by `missing` (gate.judging.pairs.judge_unpaired)."""
    pairs = tuple(pairs)
    if not pairs:
        raise ValueError("pairs: a run without comparisons cannot be judged")
    unfinished = [pair for pair in pairs if pair.status not in FINISHED]
    if unfinished:
        first = unfinished[0]
        raise ValueError(f"pairs: {len(unfinished)} comparison(s) not finished ({first.label} is {first.status})")
    lookup = _lookup(policy)
    judged = tuple((pair, judge_unpaired(pair, missing) if pair.status in UNPAIRED else _judge(pair, lookup, primary))
                   for pair in pairs)
    found = {judgement.verdict for _, judgement in judged}
    verdict: Verdict = "error" if "error" in found else "fail" if "fail" in found else "pass"
    return RunVerdict(verdict, judged)


def _judge(pair: PairResult, lookup: Lookup, primary: str | None) -> Judgement:
    if not pair.scored:
        return judge_pair(pair, Policy(), fallback=False)  # an error whatever the policy
    net, version = pair.backbone
    return judge_pair(pair, lookup(net, version, pair.cand), fallback=primary is not None and net != primary)


def _lookup(policy: PolicySource) -> Lookup:
    if isinstance(policy, Policy):
        return lambda net, weights_version, cand: policy
    return policy


def evaluate(run: RunSummary, policy: PolicySource) -> list[Condition]:
    """Every checked condition of the run, firing or not, in a stable order."""
    lookup = _lookup(policy)
    return [
        *_pair_conditions(run, lookup),
        *_layer_conditions(run, lookup),
        *_drift_conditions(run, lookup),
    ]


Sample = tuple[float, float, str, PairResult]  # a value, its limit, the image it came from, and its pair


def _worst(samples: list[Sample], *, lowest: bool, breached: Callable[[float, float], bool],
           by_image: bool = False) -> tuple[Sample, int]:
    """The worst of the samples that breach their own limit (else of all of them), and how many
    breach; ties go to the first sample, or with `by_image` to the image that sorts last (first when
    `lowest`), whatever the order of the comparisons."""
    failing = [sample for sample in samples if breached(sample[0], sample[1])]
    pick = min if lowest else max
    return pick(failing or samples, key=lambda s: (s[0], s[2]) if by_image else s[0]), len(failing)


def _pair_conditions(run: RunSummary, lookup: Lookup) -> list[Condition]:
    """Per backbone: the mean LPIPS (rule "distance"), then each other judged score (rule "score",
    labelled with the score); the worst pair, and where in it, go in the annotations."""
    conditions = []
    for rule in PAIR_RULES:
        groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        for pair in run.pairs:
            if pair.scored:
                limit, value = rule.limit(lookup(*pair.backbone, pair.cand)), rule_value(rule, pair)
                if limit is not None and value is not None:
                    groups[pair.backbone].append((value, limit, pair.cand, pair))
        for (net, version), samples in sorted(groups.items()):
            labels = {"suite": run.suite, "net": net, "weights_version": version}
            conditions.append(_pair_condition(rule, samples, labels))
    return conditions


def _pair_condition(rule: PairRule, samples: list[Sample], labels: dict[str, str]) -> Condition:
    (value, limit, _image, worst), failed = _worst(samples, lowest=False, breached=breaches)
    annotations = {"worst_pair": worst.label, "failed": f"{failed} of {len(samples)}"}
    if rule.rule == "distance":
        return Condition("distance", labels, value, limit, failed > 0, annotations)
    where = worst.regions.get(rule.score)
    if where is not None:
        annotations["where"] = ",".join(str(v) for v in where)
    return Condition("score", {**labels, "score": rule.rule}, value, limit, failed > 0, annotations)


@dataclass(frozen=True)
class _LayerRule:
    rule: str
    measure: Callable[[LayerResult, str], float | None]  # the layer's value on one side, None where unknown
    sides: tuple[str, ...]
    lowest: bool  # the worst value is the lowest (else the highest)
    limit: Callable[[Policy], float | None]  # None: the policy switches the rule off
    breaches: Callable[[float, float], bool]


def _statistic(name: str) -> Callable[[LayerResult, str], float | None]:
    def measure(layer: LayerResult, side: str) -> float | None:
        value = layer.stats(side).get(name)
        return None if value is None else float(value)

    return measure


def _spatial_std_ratio(layer: LayerResult, _side: str) -> float | None:
    """The candidate's spatial std over the reference's: near 0 when the candidate is black or flat."""
    ref, cand = layer.ref_stats.get("spatial_std"), layer.cand_stats.get("spatial_std")
    return None if ref is None or cand is None or ref <= 0 else cand / ref


_LAYER_RULES = (
    _LayerRule("sparsity", _statistic("sparsity"), SIDES, False, lambda policy: policy.max_sparsity,
               lambda v, limit: v > limit),
    _LayerRule("variance", _statistic("std"), SIDES, True, lambda policy: policy.min_std, lambda v, limit: v < limit),
    _LayerRule("nonfinite", _statistic("nonfinite"), SIDES, False,
               lambda policy: None if policy.allow_nonfinite else 0, lambda v, limit: v > limit),
    _LayerRule("flatness", _spatial_std_ratio, ("cand",), True, lambda policy: policy.min_spatial_std_ratio,
               lambda v, limit: v < limit),
    _LayerRule("dead", _statistic("dead"), ("cand",), False, lambda policy: policy.max_dead,
               lambda v, limit: v > limit),
)

LayerKey = tuple[str, str, int, str, str]  # net, weights version, layer index, layer name, side


def _layer_conditions(run: RunSummary, lookup: Lookup) -> list[Condition]:
    """Per rule, backbone, layer and side: the worst image (and the limit of its own policy)."""
    conditions = []
    for rule in _LAYER_RULES:
        for (net, version, index, layer, side), samples in sorted(_layer_samples(run, rule, lookup).items()):
            (value, limit, image, _pair), failed = _worst(samples, lowest=rule.lowest, breached=rule.breaches,
                                                          by_image=True)
            labels = {"suite": run.suite, "net": net, "weights_version": version, "layer": layer, "side": side}
            annotations = {"image": image, "layer_index": str(index)}
            conditions.append(Condition(rule.rule, labels, value, limit, failed > 0, annotations))
    return conditions


def _layer_samples(run: RunSummary, rule: _LayerRule, lookup: Lookup) -> dict[LayerKey, list[Sample]]:
    """(net, version, layer index, layer name, side) -> [(value, limit, image, pair)], known values only."""
    samples: dict[LayerKey, list[Sample]] = defaultdict(list)
    for pair in run.pairs:
        if pair.status != "done":
            continue
        limit = rule.limit(lookup(*pair.backbone, pair.cand))
        if limit is None:
            continue
        for layer in pair.layers:
            for side in rule.sides:
                value = rule.measure(layer, side)
                if value is not None:
                    image = pair.ref if side == "ref" else pair.cand
                    samples[(*pair.backbone, layer.index, layer.name, side)].append((value, limit, image, pair))
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
                lookup(net, version, "").drift.ks_threshold,
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
