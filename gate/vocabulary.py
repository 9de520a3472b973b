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

# new: a candidate without a reference; missing: a reference without a candidate (neither is computed)
COMPARISON_STATUSES = ("queued", "running", "done", "error", "new", "missing")
UNPAIRED = ("new", "missing")
FINISHED = ("done", "error", *UNPAIRED)  # a comparison in one of these is never computed again
MISSING_MODES = ("fail", "warn", "ignore")  # what new and missing frames do to a run's verdict (run option)
VERDICTS = ("pass", "fail", "error")
ALERT_RULES = ("distance", "score", "sparsity", "variance", "nonfinite", "flatness", "dead", "drift")
ALERT_STATES = ("open", "resolved")
