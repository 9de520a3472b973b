"""The rules one pair is judged by: its mean LPIPS, its spatial scores and the pixel guards, each a
named rule whose limit comes from the pair's own policy. A failed rule is a reason; one with a
location (the worst region, the box of the fireflies) says where."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gate.judging.policy import Policy
from gate.judging.results import Box, PairResult

Verdict = Literal["pass", "fail", "error"]


@dataclass(frozen=True)
class PairRule:
    rule: str  # the reason a failure gives
    score: str  # the score it reads (gate.vocabulary.SCORES); "mean" is the distance where none was stored
    limit: Callable[[Policy], float | None]  # None: not judged


PAIR_RULES = (
    PairRule("distance", "mean", lambda policy: policy.max_distance),
    PairRule("region", "region", lambda policy: policy.max_region),
    PairRule("area", "area", lambda policy: policy.max_area),
    PairRule("fireflies", "fireflies", lambda policy: policy.max_fireflies),
    PairRule("outliers", "outliers", lambda policy: policy.max_outliers),
    PairRule("nonfinite", "nonfinite", lambda policy: policy.max_nonfinite),
    PairRule("tone", "tone", lambda policy: policy.max_tone),
    PairRule("levels", "levels", lambda policy: policy.max_levels_lost),
    PairRule("flat", "flat", lambda policy: 0.0 if policy.fail_flat else None),  # the score is 1.0 when flat
)


@dataclass(frozen=True)
class Finding:
    """One failed rule: the pair's value, the limit it exceeded and, for a localised score, where."""

    rule: str
    value: float
    limit: float
    where: Box | None = None


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    findings: tuple[Finding, ...] = ()  # the failed rules, in PAIR_RULES order
    error: str | None = None  # why the pair could not be judged
    warning: str | None = None  # a new or missing frame that the run's `missing` mode lets pass

    @property
    def reasons(self) -> list[str]:
        """The failed rules' names, or why the pair is an error."""
        return [self.error] if self.error is not None else [finding.rule for finding in self.findings]

    @property
    def where(self) -> Box | None:
        """The box of the first failed rule with a location; None for whole-frame findings."""
        return next((finding.where for finding in self.findings if finding.where is not None), None)


UNPAIRED_TEXT = {"new": "new frame: no reference", "missing": "missing frame: no candidate"}


def judge_unpaired(pair: PairResult, mode: str) -> Judgement:
    """A new or missing frame (never computed) by the run's mode (gate.vocabulary.MISSING_MODES):
    `fail` fails it (reason: its status), `warn` passes it with a warning, `ignore` passes it silently."""
    if mode == "fail":
        return Judgement("fail", (Finding(pair.status, 1.0, 0.0),))
    return Judgement("pass", warning=f"{UNPAIRED_TEXT[pair.status]} (missing={mode})" if mode == "warn" else None)


def rule_value(rule: PairRule, pair: PairResult) -> float | None:
    """The score `rule` reads for a scored pair; None when the worker did not compute it."""
    return pair.mean if rule.score == "mean" else pair.scores.get(rule.score)


def breaches(value: float, limit: float) -> bool:
    """A score that is not a finite number never passes."""
    return not math.isfinite(value) or value > limit


def judge_pair(pair: PairResult, policy: Policy, *, fallback: bool) -> Judgement:
    """`fallback`: the pair was scored by another net than the run's; without a max_distance of its
    own it is an error, never a pass. The run's own net without one cannot be judged at all."""
    if not pair.scored:
        return Judgement("error", error=pair.error or "distance is not finite")
    if policy.max_distance is None:
        if fallback:
            return Judgement("error", error=f"scored by fallback {pair.net}: no threshold declared or calibrated "
                                            f"for {pair.net}")
        raise ValueError(
            f"no max_distance for net {pair.net!r} weights {pair.weights_version!r}: "
            "set it in the policy file or pass --threshold"
        )
    findings = []
    for rule in PAIR_RULES:
        limit, value = rule.limit(policy), rule_value(rule, pair)
        if limit is not None and value is not None and breaches(value, limit):
            findings.append(Finding(rule.rule, value, limit, pair.regions.get(rule.score)))
    return Judgement("fail" if findings else "pass", tuple(findings))
