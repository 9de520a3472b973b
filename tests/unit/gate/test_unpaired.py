"""New and missing frames in a run's verdict: what --missing fail|warn|ignore does, without a database."""

from __future__ import annotations

import pytest

from gate.judging.policy import Policy
from gate.judging.results import PairResult
from gate.judging.rules import RunSummary, evaluate, verdicts

POLICY = Policy(max_distance=0.1)


def _pairs(distance: float = 0.05) -> list[PairResult]:
    return [
        PairResult("ref/a.png", "cand/a.png", "done", distance, None, "alex", "w1"),
        PairResult("ref/new.png", "cand/new.png", "new", None, None, None, None),
        PairResult("ref/gone.png", "cand/gone.png", "missing", None, None, None, None),
    ]


@pytest.mark.parametrize(("mode", "verdict", "unpaired"), [
    ("fail", "fail", [("fail", ["new"], None), ("fail", ["missing"], None)]),
    ("warn", "pass", [("pass", [], "new frame: no reference (missing=warn)"),
                      ("pass", [], "missing frame: no candidate (missing=warn)")]),
    ("ignore", "pass", [("pass", [], None), ("pass", [], None)]),
])
def test_the_mode_decides_what_new_and_missing_frames_do(mode: str, verdict: str, unpaired: list) -> None:
    judged = verdicts(_pairs(), POLICY, primary="alex", missing=mode)
    assert judged.verdict == verdict
    assert [(j.verdict, j.reasons, j.warning) for _pair, j in judged.judged[1:]] == unpaired


def test_an_error_still_beats_them_and_a_failing_pair_still_fails_the_run() -> None:
    assert verdicts(_pairs(distance=0.5), POLICY, missing="ignore").verdict == "fail"
    broken = [*_pairs(), PairResult("ref/x.png", "cand/x.png", "error", None, "links outside", None, None)]
    assert verdicts(broken, POLICY, missing="fail").verdict == "error"


def test_they_raise_no_alert_condition_of_their_own() -> None:
    conditions = evaluate(RunSummary("s", tuple(_pairs())), POLICY)
    assert [(c.rule, c.firing, c.annotations["failed"]) for c in conditions] == [("distance", False, "0 of 1")]
