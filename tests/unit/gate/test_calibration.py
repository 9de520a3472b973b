"""Calibration without a database: the threshold rule, per-image limits, and how calibrated limits
fill a policy (explicit fields win)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from gate.calibration.learn import MIN_PER_IMAGE, learn, threshold
from gate.calibration.store import Calibration
from gate.judging.policy import LIMITS, Policy, SuitePolicies
from gate.judging.verdict import pair_policies, with_calibration
from gate.store.models import Run


def _calibration(thresholds: dict[str, float], per_image: dict[str, dict[str, float]] | None = None,
                 *, net: str = "alex", weights_version: str = "w1", id: int = 1) -> Calibration:
    return Calibration(id=id, suite="s", net=net, weights_version=weights_version,
                       created_at=datetime(2026, 12, 1, tzinfo=UTC), run_ids=(1, 2, 3), pairs=6, margin=0.25,
                       thresholds=thresholds, per_image=per_image or {})


def test_each_kind_of_score_gets_its_margin_over_the_noise_floor() -> None:
    assert threshold("mean", 0.02, 0.25) == pytest.approx(0.02 * 1.25 + 0.002)
    assert threshold("region", 0.4, 0.25) == pytest.approx(0.4 * 1.25 + 0.02)
    assert threshold("area", 0.0, 0.25) == pytest.approx(0.002)  # identical renders still leave room
    assert threshold("sharpness", 2.0, 0.5) == 3.0  # a score not named: the margin alone
    assert [threshold("fireflies", seen, 0.25) for seen in (0, 1, 2, 4)] == [1.0, 3.0, 4.0, 6.0]
    assert [threshold("outliers", seen, 0.25) for seen in (0, 3)] == [1.0, 5.0]
    assert [threshold("nonfinite", seen, 0.25) for seen in (0, 8)] == [0.0, 10.0]  # no NaN by chance
    assert [threshold("flat", seen, 0.25) for seen in (0.0, 1.0)] == [0.5, 1.0]


def test_the_suite_limit_is_learnt_from_every_render_and_per_image_limits_from_three() -> None:
    samples = [
        ("a.png", {"mean": 0.010, "fireflies": 0}),
        ("a.png", {"mean": 0.012, "fireflies": 2}),
        ("a.png", {"mean": 0.011, "fireflies": 1}),
        ("shots/b.png", {"mean": 0.030, "fireflies": 0}),
        ("shots/b.png", {"mean": 0.020, "fireflies": 0}),
    ]
    assert MIN_PER_IMAGE == 3
    learnt = learn(samples, margin=0.5)
    assert learnt.thresholds == {"fireflies": 4.0, "mean": pytest.approx(0.030 * 1.5 + 0.002)}
    assert learnt.per_image == {"a.png": {"fireflies": 4.0, "mean": pytest.approx(0.012 * 1.5 + 0.002)}}


def test_missing_and_non_finite_values_are_no_evidence() -> None:
    samples = [("a.png", {"mean": 0.01, "region": None}), ("a.png", {"mean": math.nan, "region": None}),
               ("a.png", {"mean": math.inf})]
    learnt = learn(samples, margin=0.0)
    assert learnt.thresholds == {"mean": pytest.approx(0.012)}
    assert learnt.per_image == {"a.png": {"mean": pytest.approx(0.012)}}


@pytest.mark.parametrize("margin", [-0.1, math.nan, math.inf])
def test_a_margin_must_be_finite_and_not_negative(margin: float) -> None:
    with pytest.raises(ValueError, match="margin: must be a finite number >= 0"):
        learn([("a.png", {"mean": 0.01})], margin=margin)


def test_nothing_to_learn_from_is_refused() -> None:
    with pytest.raises(ValueError, match="samples: no good render to learn from"):
        learn([], margin=0.25)


def test_a_pair_gets_its_images_limits_by_the_longest_path_that_ends_its_own() -> None:
    calibration = _calibration(
        {"mean": 0.05, "region": 0.6},
        {"a.png": {"mean": 0.01}, "shots/a.png": {"mean": 0.02, "region": 0.3}},
    )
    assert calibration.limits("new/shots/a.png") == {"mean": 0.02, "region": 0.3}
    assert calibration.limits("new/a.png") == {"mean": 0.01, "region": 0.6}  # the suite's where the image has none
    assert calibration.limits("a.png") == {"mean": 0.01, "region": 0.6}
    assert calibration.limits("new/xa.png") == {"mean": 0.05, "region": 0.6}  # whole components only
    assert calibration.limits("new/b.png") == {"mean": 0.05, "region": 0.6}


def test_calibrated_limits_fill_only_what_the_policy_leaves_unset() -> None:
    limits = {"mean": 0.03, "region": 0.5, "area": 0.01, "fireflies": 2.0, "outliers": 1.0, "nonfinite": 0.0,
              "tone": 4.0, "levels": 0.3}
    filled = with_calibration(Policy(), limits)
    judged = set(LIMITS.values())
    assert "max_distance" in judged
    assert {field: getattr(filled, field) for field in judged} == {
        field: limits[score] for score, field in LIMITS.items() if field in judged
    }
    untouched = set(Policy.model_fields) - judged
    assert {name: getattr(filled, name) for name in untouched} == {name: getattr(Policy(), name) for name in untouched}

    explicit = Policy(max_distance=0.2, max_sparsity=0.5)
    assert with_calibration(explicit, limits).max_distance == 0.2  # the policy (or --threshold) wins
    assert with_calibration(explicit, {}) == explicit


def test_the_lookup_fills_a_backbone_only_from_its_own_calibration() -> None:
    policy = SuitePolicies(base=Policy(), nets={"vgg": Policy(max_distance=0.4)})
    calibrated = [_calibration({"mean": 0.03}), _calibration({"mean": 0.07}, net="vgg", id=2)]
    lookup = pair_policies(Run(net="alex", options={}), policy, calibrated)
    assert lookup("alex", "w1", "a.png").max_distance == 0.03
    assert lookup("alex", "w2", "a.png").max_distance is None  # other weights: another scale, not calibrated
    assert lookup("vgg", "w1", "a.png").max_distance == 0.4  # declared for vgg: wins over its calibration
