"""Thresholds from known-good renders: pure functions, so the rule is tested without a database.

A score's noise floor is the largest value the good renders gave it; its threshold is a margin above
that floor, because a few good renders rarely show the largest value sampling noise will ever give:

- continuous scores (`mean`, `region`, `area`, `tone`, `levels`, and any score not named below):
  `max * (1 + margin) + floor`, with a small absolute floor per score (`mean` 0.002, `region` 0.02,
  `area` 0.002, `tone` 1 level, `levels` 0.05, else 0), so renders that came out identical still
  leave room for the last bits of noise (GPU reductions, encoders);
- counts (`fireflies`, `outliers`, `nonfinite`): `ceil(max * (1 + margin)) + slack`, the slack 1 for
  the detectors that noise trips now and then (fireflies, outliers) and 0 for non-finite pixels, which
  no sampler produces by chance;
- `flat` (1.0 flat, 0.0 not): 0.5, so any flat frame fails, unless a good render was flat itself
  (then 1.0: flat is normal there).

A pair fails when a score exceeds its threshold. Limits are learnt for the suite from every pair,
and per image (its path relative to the folders, as `check` pairs them) for each image scored in at
least MIN_PER_IMAGE good renders; fewer tell too little about one image's noise. None and
non-finite values are no evidence and are left out."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_MARGIN = 0.25
MIN_PER_IMAGE = 3
FLOORS = {"mean": 0.002, "region": 0.02, "area": 0.002, "tone": 1.0, "levels": 0.05}
COUNT_SLACK = {"fireflies": 1, "outliers": 1, "nonfinite": 0}
BINARY = frozenset({"flat"})

Sample = tuple[str, Mapping[str, float | None]]  # (image path relative to its folder, score -> value)


@dataclass(frozen=True)
class Learnt:
    thresholds: dict[str, float]  # score -> limit, for the suite
    per_image: dict[str, dict[str, float]]  # image -> score -> limit, where the data allows


def learn(samples: Iterable[Sample], *, margin: float = DEFAULT_MARGIN) -> Learnt:
    """The suite's and each well-sampled image's limits from the scores of good renders."""
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin: must be a finite number >= 0, got {margin}")
    suite: dict[str, list[float]] = defaultdict(list)
    images: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    renders: dict[str, int] = defaultdict(int)
    for image, scores in samples:
        renders[image] += 1
        for score, value in scores.items():
            if value is not None and math.isfinite(value):
                suite[score].append(value)
                images[image][score].append(value)
    if not renders:
        raise ValueError("samples: no good render to learn from")
    return Learnt(
        thresholds=_limits(suite, margin),
        per_image={
            image: _limits(images[image], margin) for image in sorted(renders) if renders[image] >= MIN_PER_IMAGE
        },
    )


def _limits(values: Mapping[str, list[float]], margin: float) -> dict[str, float]:
    return {score: threshold(score, max(seen), margin) for score, seen in sorted(values.items()) if seen}


def threshold(score: str, noise_floor: float, margin: float) -> float:
    """The limit of `score` whose good renders reached `noise_floor` (see the module's rule)."""
    if score in BINARY:
        return 0.5 if noise_floor < 0.5 else 1.0
    if score in COUNT_SLACK:
        return float(math.ceil(noise_floor * (1 + margin)) + COUNT_SLACK[score])
    return noise_floor * (1 + margin) + FLOORS.get(score, 0.0)
