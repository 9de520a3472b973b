"""Agreement with human judgements, scored exactly as the LPIPS repository scores BAPPS.

2AFC: per triplet, the fraction of people who agree with the metric's choice,
mean(d0 < d1 ? 1 - judge : d1 < d0 ? judge : 0.5). JND: VOC-style average precision of "same"
ranked by increasing distance. Overall scores pool every item of every subset."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from worker.perceptual import LPIPS
from worker.science import bapps


@dataclass
class Distances:
    """Per-item distances of one subset in stem order; d1 is empty for JND."""

    d0: np.ndarray
    d1: np.ndarray
    judgements: np.ndarray


@dataclass
class Evaluation:
    kind: str
    subsets: dict[str, float]
    overall: float
    n: int
    counts: dict[str, int] = field(default_factory=dict)


def two_afc(d0: np.ndarray, d1: np.ndarray, judge: np.ndarray) -> np.ndarray:
    """Per-triplet agreement in [0, 1]; a tie earns 0.5."""
    return (d0 < d1) * (1.0 - judge) + (d1 < d0) * judge + (d1 == d0) * 0.5


def average_precision(distances: np.ndarray, same: np.ndarray) -> float:
    """Area under the precision-recall curve of "same", ranking by increasing distance (LPIPS's voc_ap).
    Ties keep the items' order (stable sort), so the score is deterministic."""
    if same.sum() <= 0:
        raise ValueError("JND average precision needs at least one item judged the same")
    order = np.argsort(distances, kind="stable")
    same = same[order]
    true_pos = np.cumsum(same)
    false_pos = np.cumsum(1 - same)
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / same.sum()
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    steps = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def subset_distances(model: LPIPS, subset: bapps.Subset, *, batch: int, max_pixels: int, min_size: int,
                     device: torch.device, pool: ThreadPoolExecutor,
                     progress: Callable[[int], None] = lambda n: None) -> Distances:
    """Distances of every item: all images of a batch go through the network in one forward pass."""
    found: dict[str, tuple[float, float, float]] = {}
    for item in bapps.batches(subset, size=batch, max_pixels=max_pixels, min_size=min_size, pool=pool):
        n = len(item.stems)
        features = model.features(torch.cat(item.images).to(device), with_stats=False)
        parts = [features.take(slice(k * n, (k + 1) * n)) for k in range(len(item.images))]
        if subset.kind == "2afc":
            d0 = model.compare(parts[0], parts[1]).distance.cpu()
            d1 = model.compare(parts[0], parts[2]).distance.cpu()
        else:
            d0, d1 = model.compare(parts[0], parts[1]).distance.cpu(), torch.full((n,), float("nan"))
        for stem, a, b, j in zip(item.stems, d0.tolist(), d1.tolist(), item.judgements.tolist()):
            found[stem] = (a, b, j)
        progress(n)
    rows = np.array([found[s] for s in subset.stems], dtype=np.float64)
    return Distances(rows[:, 0], rows[:, 1] if subset.kind == "2afc" else np.empty(0), rows[:, 2])


def score(kind: str, distances: Distances) -> float:
    if kind == "2afc":
        return float(two_afc(distances.d0, distances.d1, distances.judgements).mean())
    return average_precision(distances.d0, distances.judgements)


def evaluate(model: LPIPS, subsets: list[bapps.Subset], *, batch: int, max_pixels: int, min_size: int,
             device: torch.device, progress: Callable[[int], None] = lambda n: None) -> Evaluation:
    """Score of each subset and of all items pooled."""
    kind = subsets[0].kind
    per_subset: dict[str, Distances] = {}
    with ThreadPoolExecutor(2, thread_name_prefix="bapps") as pool:
        for subset in subsets:
            per_subset[subset.name] = subset_distances(model, subset, batch=batch, max_pixels=max_pixels,
                                                       min_size=min_size, device=device, pool=pool,
                                                       progress=progress)
    pooled = Distances(*(np.concatenate([getattr(d, k) for d in per_subset.values()])
                         for k in ("d0", "d1", "judgements")))
    return Evaluation(kind, {name: score(kind, d) for name, d in per_subset.items()}, score(kind, pooled),
                      len(pooled.d0), {name: len(d.d0) for name, d in per_subset.items()})
