"""The suite plot's layout and the explicit pairs' confinement: pure functions, no server, no torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from gate.api.plot import BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, trend_plot
from gate.errors import GateError
from gate.runs.service import confined_pairs
from gate.settings import Settings


def _trend(means: list[float | None], *, limit: float | None = None, drift_run: int | None = None,
           baseline: list[int] | None = None) -> dict:
    runs = [{"run": index + 1, "verdict": "pass", "mean": mean, "max": None if mean is None else 2 * mean}
            for index, mean in enumerate(means)]
    calibrations = [] if limit is None else [{"net": "alex", "thresholds": {"mean": limit}}]
    alerts = [] if drift_run is None else [{"run": drift_run, "state": "open"}]
    return {"runs": runs, "calibrations": calibrations, "drift": {"alerts": alerts, "baseline_runs": baseline or []}}


def test_runs_spread_evenly_and_distances_scale_from_zero_to_a_tenth_above_the_largest() -> None:
    plot = trend_plot(_trend([0.1, 0.2, None, 0.25], limit=0.3, drift_run=2, baseline=[1, 2]))
    step = (WIDTH - LEFT - RIGHT) / 4
    assert [point["x"] for point in plot["points"]] == pytest.approx([LEFT + step / 2, LEFT + 1.5 * step,
                                                                      LEFT + 3.5 * step])
    top, inner = 0.5 * 1.1, HEIGHT - TOP - BOTTOM  # the largest worst distance is 0.5
    assert [point["y"] for point in plot["points"]] == pytest.approx([TOP + inner * (1 - m / top)
                                                                      for m in (0.1, 0.2, 0.25)])
    assert plot["yticks"][0]["y"] == pytest.approx(HEIGHT - BOTTOM) and plot["yticks"][-1]["value"] == top
    assert plot["thresholds"] == [{"net": "alex", "value": 0.3, "y": pytest.approx(TOP + inner * (1 - 0.3 / top))}]
    assert plot["drift"] == [{"x": pytest.approx(LEFT + 1.5 * step), "run": 2, "state": "open"}]
    assert plot["baseline"] == {"x": pytest.approx(LEFT), "width": pytest.approx(2 * step)}
    assert plot["mean_path"].startswith(f"M{LEFT + step / 2:.1f},") and plot["mean_path"].count("L") == 2


def test_an_empty_suite_draws_axes_only() -> None:
    plot = trend_plot(_trend([]))
    assert (plot["points"], plot["mean_path"], plot["thresholds"], plot["drift"], plot["baseline"]) == (
        [], "", [], [], None)


def test_explicit_pairs_stay_in_the_image_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside.png"
    (root / "ref").mkdir(parents=True)
    for path in (root / "ref" / "a.png", root / "b.png", outside):
        path.write_bytes(b"x")
    (root / "link.png").symlink_to(outside)
    settings = Settings(image_root=root)
    assert confined_pairs(settings, [("ref/a.png", "ref/../b.png"), (str(root / "b.png"), "b.png")]).every == [
        ("b.png", "b.png"), ("ref/a.png", "b.png")]  # by candidate, then reference; each pair once
    for pair, message in ((("../outside.png", "b.png"), "pairs[0].ref: ../outside.png: outside the image root"),
                          (("b.png", "link.png"), "pairs[0].cand: link.png: outside the image root"),
                          (("b.png", "ref"), "pairs[0].cand: ref: no such file under the image root")):
        with pytest.raises(GateError, match=message.replace("[", r"\[").replace("]", r"\]")):
            confined_pairs(settings, [pair])
