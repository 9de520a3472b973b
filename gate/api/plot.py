"""The suite page's plot, laid out on the server: a suite's trend (gate.judging.trend) as the
coordinates an inline SVG draws, so the page needs no charting library and no script."""

from __future__ import annotations

from typing import Any

WIDTH, HEIGHT = 820, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 16, 44
TICKS = 5


def trend_plot(trend: dict[str, Any]) -> dict[str, Any]:
    """Mean and worst distance per run (x: the runs in order, y: distance from 0), the calibrated
    mean threshold of each net as a line, runs with a drift alert marked, the drift baseline shaded."""
    runs = trend["runs"]
    limits = [(c["net"], c["thresholds"]["mean"]) for c in trend["calibrations"] if "mean" in c["thresholds"]]
    values = [run[key] for run in runs for key in ("mean", "max") if run[key] is not None]
    top = max([*values, *(limit for _net, limit in limits), 1e-3]) * 1.1
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = inner_w / max(len(runs), 1)

    def x_of(index: int) -> float:
        return LEFT + (index + 0.5) * step

    def y_of(value: float) -> float:
        return float(TOP + inner_h * (1 - value / top))

    position = {run["run"]: index for index, run in enumerate(runs)}
    points = [{"x": x_of(index), "y": y_of(run["mean"]), "y_max": y_of(run["max"]), "run": run["run"],
               "verdict": run["verdict"] or "pending", "mean": run["mean"], "max": run["max"]}
              for index, run in enumerate(runs) if run["mean"] is not None]
    baseline = [position[run] for run in trend["drift"]["baseline_runs"] if run in position]
    return {
        "width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP, "bottom": HEIGHT - BOTTOM,
        "points": points,
        "mean_path": " ".join(f"{'M' if i == 0 else 'L'}{p['x']:.1f},{p['y']:.1f}" for i, p in enumerate(points)),
        "thresholds": [{"net": net, "value": limit, "y": y_of(limit)} for net, limit in limits],
        "drift": [{"x": x_of(position[alert["run"]]), "run": alert["run"], "state": alert["state"]}
                  for alert in trend["drift"]["alerts"] if alert["run"] in position],
        "baseline": None if not baseline else {"x": x_of(min(baseline)) - step / 2,
                                                "width": (max(baseline) - min(baseline) + 1) * step},
        "yticks": [{"value": top * i / TICKS, "y": y_of(top * i / TICKS)} for i in range(TICKS + 1)],
        "xticks": [{"x": x_of(index), "run": run["run"]} for index, run in enumerate(runs)
                   if index % max(1, len(runs) // 10) == 0],
    }
