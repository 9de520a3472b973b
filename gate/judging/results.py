"""What judging reads of a finished run, as plain frozen dataclasses: the rules are pure functions
over them, tested without a database, and the store stays a detail of the caller."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gate.vocabulary import COMPARISON_STATUSES, STAT_KEYS

SIDES = ("ref", "cand")
Box = tuple[int, int, int, int]  # x, y, w, h in the candidate's pixels


@dataclass(frozen=True)
class LayerResult:
    """One backbone layer of a comparison; a statistic is None where it was not finite."""

    index: int
    name: str
    distance: float | None
    ref_stats: Mapping[str, float | int | None]
    cand_stats: Mapping[str, float | int | None]

    def __post_init__(self) -> None:
        for side in SIDES:
            missing = [key for key in STAT_KEYS if key not in self.stats(side)]
            if missing:
                raise ValueError(f"layer {self.name!r} {side}_stats: missing {', '.join(missing)}")

    def stats(self, side: str) -> Mapping[str, float | int | None]:
        return self.ref_stats if side == "ref" else self.cand_stats


@dataclass(frozen=True)
class PairResult:
    ref: str
    cand: str
    status: str
    distance: float | None
    error: str | None
    net: str | None  # the backbone that scored it; None when it never was
    weights_version: str | None
    layers: tuple[LayerResult, ...] = ()
    scores: Mapping[str, float] = field(default_factory=dict)  # gate.vocabulary.SCORES by name, where computed
    regions: Mapping[str, Box] = field(default_factory=dict)  # the location of the scores that have one
    seconds: float | None = None  # decoding and model time, where it was computed

    def __post_init__(self) -> None:
        if self.status not in COMPARISON_STATUSES:
            raise ValueError(f"{self.label}: status {self.status!r} is not one of {', '.join(COMPARISON_STATUSES)}")
        if self.status == "done" and (self.net is None or self.weights_version is None):
            raise ValueError(f"{self.label}: a done comparison needs its net and weights_version")
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "regions", {name: _box(box, self.label) for name, box in self.regions.items()})

    @property
    def label(self) -> str:
        return f"{self.ref} -> {self.cand}"

    @property
    def scored(self) -> bool:
        return self.status == "done" and self.distance is not None and math.isfinite(self.distance)

    @property
    def score(self) -> float:
        """The distance of a scored pair."""
        if self.distance is None or not self.scored:
            raise ValueError(f"{self.label}: not scored ({self.status})")
        return self.distance

    @property
    def mean(self) -> float:
        """The LPIPS map's mean over what no mask hides: the distance where nothing is masked."""
        return self.scores.get("mean", self.score)

    @property
    def backbone(self) -> tuple[str, str]:
        """(net, weights_version) that scored the pair: what its thresholds and drift are keyed by."""
        if self.net is None or self.weights_version is None:
            raise ValueError(f"{self.label}: never scored by any backbone")
        return self.net, self.weights_version


def _box(value: object, label: str) -> Box:
    """[x, y, w, h] as stored (JSON lists) -> a tuple of four ints."""
    if not (isinstance(value, list | tuple) and len(value) == 4 and all(isinstance(v, int) for v in value)):
        raise ValueError(f"{label}: a region must be [x, y, w, h] in pixels, got {value!r}")
    x, y, w, h = value
    return x, y, w, h
