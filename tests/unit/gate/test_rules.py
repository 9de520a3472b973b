import pytest

from gate.judging.drift import DriftResult
from gate.judging.policy import DriftPolicy, Policy
from gate.judging.results import LayerResult, PairResult
from gate.judging.rules import Condition, RunSummary, evaluate, verdicts

GATE = Policy(max_distance=0.1)
BY_NET = {("alex", "0.1"): Policy(max_distance=0.1), ("vgg", "0.1"): Policy(max_distance=0.2)}


def _stats(sparsity=0.5, std=0.5, nonfinite=0):
    return {"sparsity": sparsity, "mean": 0.2, "std": std, "min": -1.0, "max": 3.0, "nonfinite": nonfinite,
            "spatial_std": 0.4, "dead": 0.0}


def _layer(index=0, name="relu1", ref=None, cand=None):
    return LayerResult(index, name, 0.01, ref or _stats(), cand or _stats())


def _pair(ref, distance, *, status="done", net="alex", layers=(), error=None):
    return PairResult(ref, f"cand/{ref}", status, distance, error, net, "0.1", layers)


def _rules(conditions, rule):
    return [condition for condition in conditions if condition.rule == rule]


# --- verdicts --------------------------------------------------------------------------------


def test_a_run_passes_when_every_comparison_passes():
    pairs = [_pair("a.png", 0.05), _pair("b.png", 0.1)]  # exactly at the threshold passes
    result = verdicts(pairs, GATE)
    assert result.verdict == "pass"
    assert [verdict for _, verdict in result.pairs] == ["pass", "pass"]
    assert [pair for pair, _ in result.pairs] == pairs


def test_one_failure_fails_the_run():
    result = verdicts([_pair("a.png", 0.05), _pair("b.png", 0.1000001)], GATE)
    assert (result.verdict, [v for _, v in result.pairs]) == ("fail", ["pass", "fail"])


def test_an_error_beats_a_failure():
    pairs = [_pair("a.png", 0.5), _pair("b.png", None, status="error", net=None, error="decode: truncated")]
    result = verdicts(pairs, GATE)
    assert (result.verdict, [v for _, v in result.pairs]) == ("error", ["fail", "error"])


def test_a_non_finite_distance_is_an_error_not_a_pass():
    result = verdicts([_pair("a.png", float("nan"))], GATE)
    assert (result.verdict, result.pairs[0][1]) == ("error", "error")


def test_each_pair_is_judged_by_the_policy_of_the_net_that_scored_it():
    pairs = [_pair("a.png", 0.15, net="alex"), _pair("b.png", 0.15, net="vgg")]
    result = verdicts(pairs, lambda net, version, cand: BY_NET[(net, version)])
    assert (result.verdict, [v for _, v in result.pairs]) == ("fail", ["fail", "pass"])


@pytest.mark.parametrize(
    "pairs, policy, message",
    [
        ([], GATE, "pairs: a run without comparisons cannot be judged"),
        (
            [_pair("a.png", 0.1), _pair("b.png", None, status="running")],
            GATE,
            "pairs: 1 comparison(s) not finished (b.png -> cand/b.png is running)",
        ),
        (
            [_pair("a.png", 0.1, net="vgg")],
            Policy(),
            "no max_distance for net 'vgg' weights '0.1': set it in the policy file or pass --threshold",
        ),
    ],
)
def test_verdicts_refuse_what_cannot_be_judged(pairs, policy, message):
    with pytest.raises(ValueError) as caught:
        verdicts(pairs, policy)
    assert str(caught.value) == message


def test_results_validate_their_fields():
    with pytest.raises(
        ValueError, match=r"^a.png -> cand/a.png: status 'ok' is not one of queued, running, done, error, new, missing$"
    ):
        _pair("a.png", 0.1, status="ok")
    with pytest.raises(ValueError, match=r"^a.png -> cand/a.png: a done comparison needs its net and weights_version$"):
        _pair("a.png", 0.1, net=None)
    with pytest.raises(ValueError, match=r"^layer 'relu1' cand_stats: missing std, nonfinite, spatial_std, dead$"):
        LayerResult(0, "relu1", 0.0, _stats(), {"sparsity": 0, "mean": 0, "min": 0, "max": 0})


# --- distance --------------------------------------------------------------------------------


def test_distance_condition_per_backbone_with_the_worst_distance():
    run = RunSummary(
        "render",
        (_pair("a.png", 0.05), _pair("b.png", 0.15), _pair("c.png", 0.15, net="vgg"), _pair("d.png", 0.12, net="vgg")),
    )
    conditions = _rules(evaluate(run, lambda net, version, cand: BY_NET[(net, version)]), "distance")
    assert conditions == [
        Condition(
            "distance",
            {"suite": "render", "net": "alex", "weights_version": "0.1"},
            0.15,
            0.1,
            True,
            {"worst_pair": "b.png -> cand/b.png", "failed": "1 of 2"},
        ),
        Condition(
            "distance",
            {"suite": "render", "net": "vgg", "weights_version": "0.1"},
            0.15,
            0.2,
            False,  # returned anyway, so an open alert can be resolved
            {"worst_pair": "c.png -> cand/c.png", "failed": "0 of 2"},
        ),
    ]


def test_no_threshold_means_the_distance_rule_is_not_checked():
    assert _rules(evaluate(RunSummary("render", (_pair("a.png", 0.9),)), Policy()), "distance") == []


# --- layer statistics ------------------------------------------------------------------------


def _layered_run():
    a = _pair("a.png", 0.05, layers=[_layer(0, "relu1", cand=_stats(sparsity=0.99, std=0.3)), _layer(1, "relu2")])
    b = _pair(
        "b.png",
        0.06,
        layers=[
            _layer(0, "relu1", ref=_stats(std=5e-5, nonfinite=3), cand=_stats(sparsity=0.995)),
            _layer(1, "relu2", ref=_stats(sparsity=None, std=None, nonfinite=7)),
        ],
    )
    errored = _pair("c.png", None, status="error", net=None, error="decode: truncated")
    return RunSummary("render", (a, b, errored))


def test_sparsity_fires_per_layer_and_side_with_the_worst_image():
    conditions = _rules(evaluate(_layered_run(), GATE), "sparsity")
    assert [(c.labels["layer"], c.labels["side"], c.value, c.firing) for c in conditions] == [
        ("relu1", "cand", 0.995, True),
        ("relu1", "ref", 0.5, False),
        ("relu2", "cand", 0.5, False),
        ("relu2", "ref", 0.5, False),  # b's ref stat was not finite: only a's counts
    ]
    firing = conditions[0]
    assert firing.labels == {
        "suite": "render",
        "net": "alex",
        "weights_version": "0.1",
        "layer": "relu1",
        "side": "cand",
    }
    assert (firing.threshold, firing.annotations) == (0.98, {"image": "cand/b.png", "layer_index": "0"})


def test_variance_fires_on_the_smallest_std():
    conditions = _rules(evaluate(_layered_run(), GATE), "variance")
    fired = [(c.labels["layer"], c.labels["side"], c.value, c.annotations["image"]) for c in conditions if c.firing]
    assert fired == [("relu1", "ref", 5e-5, "b.png")]
    assert len(conditions) == 4 and conditions[0].threshold == 1e-4


def test_nonfinite_fires_on_any_count_unless_allowed():
    conditions = _rules(evaluate(_layered_run(), GATE), "nonfinite")
    fired = [(c.labels["layer"], c.labels["side"], c.value, c.threshold) for c in conditions if c.firing]
    assert fired == [("relu1", "ref", 3, 0), ("relu2", "ref", 7, 0)]
    assert len(conditions) == 4
    assert _rules(evaluate(_layered_run(), Policy(max_distance=0.1, allow_nonfinite=True)), "nonfinite") == []


# --- drift -----------------------------------------------------------------------------------


def test_drift_condition_per_backbone_and_none_without_enough_samples():
    drifted = DriftResult(0.6, 1e-9, 0.8, 0.05, 200, 50, True, ["KS p=1e-09 < 0.01", "PSI 0.8 > 0.333"])
    too_few = DriftResult(None, None, None, None, 200, 12, False, ["not enough samples (recent n=12 < min 30)"])
    run = RunSummary("render", (_pair("a.png", 0.05),), drift={("alex", "0.1"): drifted, ("vgg", "0.1"): too_few})
    policy = Policy(max_distance=0.1, drift=DriftPolicy(ks_threshold=0.001))
    assert _rules(evaluate(run, policy), "drift") == [
        Condition(
            "drift",
            {"suite": "render", "net": "alex", "weights_version": "0.1"},
            1e-9,
            0.001,
            True,
            {
                "summary": "KS p=1e-09 < 0.01; PSI 0.8 > 0.333",
                "psi": "0.8",
                "wasserstein": "0.05",
                "samples": "200 baseline, 50 recent",
            },
        )
    ]


def test_evaluate_orders_rules_and_counts_every_checked_condition():
    rules = [c.rule for c in evaluate(_layered_run(), GATE)]
    assert rules == ["distance"] + ["sparsity"] * 4 + ["variance"] * 4 + ["nonfinite"] * 4 + ["flatness"] * 2
