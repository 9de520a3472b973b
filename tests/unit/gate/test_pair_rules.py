"""The rules a pair is judged by (gate.judging.pairs) and the alert conditions of scores and feature
quality (gate.judging.rules), on plain PairResult values."""

import math

import pytest

from gate.judging.pairs import PAIR_RULES, Finding, judge_pair
from gate.judging.policy import LIMITS, ImageRule, Policy, SuitePolicies, load_policies
from gate.judging.results import LayerResult, PairResult
from gate.judging.rules import Condition, RunSummary, evaluate, verdicts
from gate.judging.verdict import pair_policies, relative_image
from gate.store.models import Run
from gate.vocabulary import SCORES

CLEAN = {"mean": 0.02, "region": 0.3, "area": 0.0, "fireflies": 0.0, "flat": 0.0, "nonfinite": 0.0, "outliers": 0.0}
STRICT = Policy(max_distance=0.1, max_region=0.9, max_area=0.01, max_fireflies=2, max_outliers=10, max_nonfinite=0)


def _pair(cand="a.png", distance=0.02, *, net="alex", scores=None, regions=None, layers=()):
    return PairResult(f"ref/{cand}", f"new/{cand}", "done", distance, None, net, "0.1", layers,
                      {**CLEAN, "mean": distance, **(scores or {})}, regions or {})


def _stats(spatial_std=1.0, dead=0.0):
    return {"sparsity": 0.5, "mean": 0.2, "std": 0.5, "min": -1.0, "max": 3.0, "nonfinite": 0,
            "spatial_std": spatial_std, "dead": dead}


def _layer(index, name, *, ref=None, cand=None):
    return LayerResult(index, name, 0.01, ref or _stats(), cand or _stats())


# --- each rule ----------------------------------------------------------------------------------


def test_every_score_has_its_rule_and_every_limited_score_its_policy_field():
    """LIMITS is what a calibration fills: score name -> the Policy field its rule reads."""
    assert sorted(rule.score for rule in PAIR_RULES) == sorted(SCORES)
    assert set(LIMITS) == set(SCORES) - {"flat"}  # flat is on or off (fail_flat)
    for rule in PAIR_RULES:
        if rule.score in LIMITS:
            assert rule.limit(Policy(**{LIMITS[rule.score]: 0.5})) == 0.5


@pytest.mark.parametrize(
    "score, value, limit, where",
    [
        ("region", 1.75, 0.9, [100, 40, 32, 32]),
        ("area", 0.02, 0.01, None),  # a share of the frame: no location
        ("fireflies", 12.0, 2, [500, 300, 40, 38]),
        ("outliers", 36.0, 10, [64, 64, 6, 6]),
        ("nonfinite", 1.0, 0, [8, 8, 1, 1]),
    ],
)
def test_a_score_above_its_limit_fails_with_its_reason_and_location(score, value, limit, where):
    regions = {} if where is None else {score: where}
    judgement = judge_pair(_pair(scores={score: value}, regions=regions), STRICT, fallback=False)
    box = None if where is None else tuple(where)
    assert (judgement.verdict, judgement.findings) == ("fail", (Finding(score, value, limit, box),))
    assert (judgement.reasons, judgement.where) == ([score], box)
    at_limit = judge_pair(_pair(scores={score: float(limit)}, regions=regions), STRICT, fallback=False)
    assert (at_limit.verdict, at_limit.reasons, at_limit.where) == ("pass", [], None)


def test_an_unset_limit_or_a_score_never_computed_is_not_judged():
    lax = Policy(max_distance=0.1)
    assert judge_pair(_pair(scores={"region": 9.0, "fireflies": 400.0}), lax, fallback=False).verdict == "pass"
    old = PairResult("ref/a.png", "new/a.png", "done", 0.02, None, "alex", "0.1")  # stored before the scores
    assert judge_pair(old, STRICT, fallback=False).verdict == "pass"


def test_a_score_that_is_not_a_number_never_passes():
    judgement = judge_pair(_pair(scores={"region": math.nan}), STRICT, fallback=False)
    assert (judgement.verdict, judgement.reasons) == ("fail", ["region"])


def test_a_flat_candidate_fails_by_default_as_a_whole_frame_finding():
    flat = _pair(scores={"flat": 1.0})
    judgement = judge_pair(flat, Policy(max_distance=0.1), fallback=False)
    assert (judgement.verdict, judgement.findings, judgement.where) == ("fail", (Finding("flat", 1.0, 0.0),), None)
    assert judge_pair(flat, Policy(max_distance=0.1, fail_flat=False), fallback=False).verdict == "pass"


def test_the_mean_over_the_unmasked_map_is_judged_not_the_distance():
    masked = _pair(distance=0.3, scores={"mean": 0.05})  # the damage under a mask lifts only the distance
    assert judge_pair(masked, STRICT, fallback=False).verdict == "pass"
    plain = PairResult("ref/a.png", "new/a.png", "done", 0.3, None, "alex", "0.1")
    assert judge_pair(plain, STRICT, fallback=False).reasons == ["distance"]


def test_reasons_keep_rule_order_and_where_is_the_first_located_failure():
    pair = _pair(distance=0.4, scores={"mean": 0.4, "region": 1.8, "area": 0.2, "fireflies": 9.0},
                 regions={"region": [10, 20, 32, 32], "fireflies": [12, 22, 5, 5]})
    judgement = judge_pair(pair, STRICT, fallback=False)
    assert judgement.reasons == ["distance", "region", "area", "fireflies"]
    assert judgement.where == (10, 20, 32, 32)  # distance and area are whole-frame: the region says where
    whole = judge_pair(_pair(distance=0.4, scores={"mean": 0.4}), STRICT, fallback=False)
    assert (whole.reasons, whole.where) == (["distance"], None)


def test_a_region_must_be_four_pixel_ints():
    with pytest.raises(ValueError, match=r"^ref/a.png -> new/a.png: a region must be \[x, y, w, h\] in pixels, "
                                         r"got \[1, 2, 3\]$"):
        _pair(regions={"region": [1, 2, 3]})


# --- a fallback backbone on its own scale ------------------------------------------------------------


def test_a_fallback_pair_without_its_own_threshold_is_an_error_never_a_pass():
    policies = SuitePolicies(base=Policy(max_distance=0.1))
    pairs = [_pair("a.png"), _pair("b.png", distance=0.001, net="vgg")]

    result = verdicts(pairs, lambda net, version, cand: policies.policy_for(net, version, primary="alex"),
                      primary="alex")
    assert (result.verdict, [v for _, v in result.pairs]) == ("error", ["pass", "error"])
    reason = "scored by fallback vgg: no threshold declared or calibrated for vgg"
    assert (result.judged[1][1].reasons, result.judged[1][1].error) == ([reason], reason)


def test_a_fallback_pair_is_judged_by_the_limits_declared_for_its_net(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[suite.s]\nmax_distance = 0.1\nmax_region = 0.9\n[suite.s.nets.vgg]\nmax_distance = 0.2\n")
    policies = load_policies(path).suites["s"]

    def judged(primary):
        lookup = lambda net, version, cand: policies.policy_for(net, version, primary=primary)  # noqa: E731
        return verdicts([_pair("a.png", distance=0.15, net="vgg", scores={"region": 5.0})], lookup,
                        primary=primary).judged[0][1]

    assert (judged("alex").verdict, judged("alex").reasons) == ("pass", [])  # vgg's 0.2; the suite's region: alex's
    assert (judged("vgg").verdict, judged("vgg").reasons) == ("fail", ["region"])  # a vgg run: the suite's limits


def test_the_runs_own_net_without_a_threshold_cannot_be_judged_at_all():
    with pytest.raises(ValueError, match=r"^no max_distance for net 'alex' weights '0.1': set it in the policy file "
                                         r"or pass --threshold$"):
        verdicts([_pair()], Policy(), primary="alex")


def test_a_runs_pairs_get_the_policy_of_their_net_and_of_their_path_under_the_candidate_folder():
    ui = ImageRule(glob="shots/ui_*", overrides={"max_distance": 0.5, "max_fireflies": 20.0})
    policies = SuitePolicies(base=Policy(max_distance=0.1, max_fireflies=2), images=(ui,))
    lookup = pair_policies(Run(net="alex", options={"cand_dir": "renders/new"}), policies)
    assert lookup("alex", "w1", "renders/new/shots/ui_1.png").max_distance == 0.5
    assert lookup("alex", "w1", "renders/new/shots/hero.png").max_distance == 0.1
    fallback = lookup("vgg", "w2", "renders/new/shots/ui_1.png")  # the image's LPIPS limit is on alex's scale
    assert (fallback.max_distance, fallback.max_fireflies) == (None, 20.0)
    assert [relative_image("new/a.png", cand_dir) for cand_dir in ("new", "new/", ".", None)] == [
        "a.png", "a.png", "new/a.png", "new/a.png"]


# --- alert conditions of the scores -----------------------------------------------------------------


def test_each_judged_score_is_a_condition_per_backbone_with_the_worst_pair_and_where():
    run = RunSummary("render", (
        _pair("a.png", scores={"fireflies": 12.0}, regions={"fireflies": [500, 300, 40, 38]}),
        _pair("b.png", scores={"fireflies": 30.0}, regions={"fireflies": [0, 0, 8, 8]}),
        _pair("c.png", scores={"fireflies": 1.0}),
    ))
    conditions = [c for c in evaluate(run, Policy(max_distance=0.1, max_fireflies=2)) if c.rule == "score"]
    labels = {"suite": "render", "net": "alex", "weights_version": "0.1"}
    assert conditions == [
        Condition("score", {**labels, "score": "fireflies"}, 30.0, 2, True,
                  {"worst_pair": "ref/b.png -> new/b.png", "failed": "2 of 3", "where": "0,0,8,8"}),
        Condition("score", {**labels, "score": "flat"}, 0.0, 0.0, False,
                  {"worst_pair": "ref/a.png -> new/a.png", "failed": "0 of 3"}),
    ]


def test_per_image_limits_judge_each_pair_and_the_condition_names_the_breach():
    run = RunSummary("render", (_pair("shots/ui_1.png", distance=0.3), _pair("shots/hero.png", distance=0.2)))

    def lookup(net, version, cand):
        return Policy(max_distance=0.5 if "ui_" in cand else 0.1)

    [distance] = [c for c in evaluate(run, lookup) if c.rule == "distance"]
    assert (distance.value, distance.threshold, distance.firing) == (0.2, 0.1, True)
    assert distance.annotations == {"worst_pair": "ref/shots/hero.png -> new/shots/hero.png", "failed": "1 of 2"}


# --- feature quality ----------------------------------------------------------------------------------


def test_a_black_candidate_opens_a_flatness_condition_naming_each_flat_layer():
    black = [_layer(0, "features.1", ref=_stats(spatial_std=1.71), cand=_stats(spatial_std=0.35)),
             _layer(1, "features.4", ref=_stats(spatial_std=2.08), cand=_stats(spatial_std=1.0))]
    rerender = [_layer(0, "features.1", ref=_stats(spatial_std=1.5), cand=_stats(spatial_std=1.4)),
                _layer(1, "features.4", ref=_stats(spatial_std=2.0), cand=_stats(spatial_std=2.1))]
    run = RunSummary("render", (_pair("black.png", layers=black), _pair("ok.png", layers=rerender)))
    conditions = [c for c in evaluate(run, Policy(max_distance=0.1)) if c.rule == "flatness"]
    labels = {"suite": "render", "net": "alex", "weights_version": "0.1", "side": "cand"}
    assert conditions == [
        Condition("flatness", {**labels, "layer": "features.1"}, 0.35 / 1.71, 0.25, True,
                  {"image": "new/black.png", "layer_index": "0"}),
        Condition("flatness", {**labels, "layer": "features.4"}, 1.0 / 2.08, 0.25, False,
                  {"image": "new/black.png", "layer_index": "1"}),
    ]
    switched_off = Policy(max_distance=0.1, min_spatial_std_ratio=None)
    assert [c for c in evaluate(run, switched_off) if c.rule == "flatness"] == []


def test_flatness_needs_both_spatial_stds_and_a_reference_that_is_not_flat_itself():
    flat_ref = [_layer(0, "features.1", ref=_stats(spatial_std=0.0), cand=_stats(spatial_std=0.0))]
    unknown = [_layer(0, "features.1", ref=_stats(spatial_std=None), cand=_stats(spatial_std=0.0))]
    old = [LayerResult(0, "features.1", 0.01, *(dict(_stats(), spatial_std=None, dead=None) for _ in "rc"))]
    for layers in (flat_ref, unknown, old):
        run = RunSummary("render", (_pair(layers=layers),))
        assert [c for c in evaluate(run, Policy(max_distance=0.1)) if c.rule in ("flatness", "dead")] == []


def test_dead_channels_above_max_dead_open_a_condition_once_declared():
    layers = [_layer(0, "features.1", cand=_stats(dead=0.6)), _layer(1, "features.4", cand=_stats(dead=0.1))]
    run = RunSummary("render", (_pair(layers=layers),))
    assert [c for c in evaluate(run, Policy(max_distance=0.1)) if c.rule == "dead"] == []  # off by default
    conditions = [c for c in evaluate(run, Policy(max_distance=0.1, max_dead=0.5)) if c.rule == "dead"]
    assert [(c.labels["layer"], c.value, c.threshold, c.firing) for c in conditions] == [
        ("features.1", 0.6, 0.5, True), ("features.4", 0.1, 0.5, False)]
