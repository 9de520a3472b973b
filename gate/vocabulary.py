"""The names every layer shares: Settings, click choices, policies, the store and the engine take their
choices from here, so a new backbone or precision is added in one place. A leaf: no imports of ours."""

from __future__ import annotations

from typing import Literal, get_args

Net = Literal["alex", "vgg", "squeeze"]
Precision = Literal["fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]

NETS: tuple[str, ...] = get_args(Net)
PRECISIONS: tuple[str, ...] = get_args(Precision)
DEVICES: tuple[str, ...] = get_args(Device)
VERSIONS = ("0.0", "0.1")
Resize = Literal["none", "ref", "cand"]  # which side is resized to the other's size when they differ
RESIZE_MODES: tuple[str, ...] = get_args(Resize)  # the LPIPS linear heads' version, not the backbone's weights

# per-layer feature statistics; spatial_std: per channel over H and W, then averaged over channels;
# dead: the share of channels near zero (|x| < 1e-6) at every position
STAT_KEYS = ("sparsity", "mean", "std", "min", "max", "nonfinite", "spatial_std", "dead")
# every scored pair's scores (comparisons.scores): from the LPIPS map (mean, region, area), then the
# pixel guards (fireflies, flat, nonfinite, outliers); see gate.scoring and worker.guards
SCORES = ("mean", "region", "area", "fireflies", "flat", "nonfinite", "outliers", "tone", "levels")
REGION_PX = 32  # the worst-region score's window, in image pixels (run option region_px)
AREA_LEVEL = 1.0  # the area score counts map values above this (run option area_level)
# every heatmap's colour scale, in LPIPS map units, so maps compare across pairs: values at or above it
# saturate. Sampling noise of 14 8-bit levels peaks near 0.25 (99th percentile 0.13) and stays in the dark
# quarter; a damaged patch reaches 0.8-1.3 and shows hot. It equals AREA_LEVEL: saturated is what `area` counts.
HEATMAP_SCALE = 1.0
# the heatmaps' colour ramp ('inferno' anchors, evenly spaced over [0, HEATMAP_SCALE]): the worker paints
# with it, the report's colour bar shows it
HEATMAP_RAMP = ((0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                (250, 193, 39), (252, 255, 164))
HEATMAP_LEVELS = 16  # the heatmaps' steps (a palette PNG): each 1/16 of the scale
THUMBNAIL_PX = 320  # the longest side of the report's previews and heatmaps, as the worker stores them

# new: a candidate without a reference; missing: a reference without a candidate (neither is computed)
COMPARISON_STATUSES = ("queued", "running", "done", "error", "new", "missing")
UNPAIRED = ("new", "missing")
FINISHED = ("done", "error", *UNPAIRED)  # a comparison in one of these is never computed again
MISSING_MODES = ("fail", "warn", "ignore")  # what new and missing frames do to a run's verdict (run option)
VERDICTS = ("pass", "fail", "error")
ALERT_RULES = ("distance", "score", "sparsity", "variance", "nonfinite", "flatness", "dead", "drift")
ALERT_STATES = ("open", "resolved")
# the `severity` label Alertmanager routes on, per rule: images that fail or cannot be scored page
# (critical); feature-health and drift rules ask for a look (warning). docs/runbook.md has a section per rule.
ALERT_SEVERITIES: dict[str, str] = {
    "distance": "critical",
    "score": "critical",
    "nonfinite": "critical",
    "sparsity": "warning",
    "variance": "warning",
    "flatness": "warning",
    "dead": "warning",
    "drift": "warning",
}
