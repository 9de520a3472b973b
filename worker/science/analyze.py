"""What each tapped layer contributes, measured on a folder of images:

- diversity: 1 - mean |correlation| between the normalised features' channels (over all positions of
  all images); dead channels (constant) are counted and left out;
- stability: mean relative change ||f(aug x) - f(x)|| / ||f(x)|| of the normalised features under a
  1-px shift (edge column repeated) and a slight brightening (+0.02 on [0, 1], clamped);
- discriminability: AUC of the layer's LPIPS contribution for (image, other image of the same size)
  against (image, augmented image): 1.0 means every different pair is farther than every same pair."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from worker import images
from worker.perceptual import LPIPS, PRESETS, Features
from worker.science.bapps import IMAGE_SUFFIXES, DataError

BRIGHTNESS = 0.02  # on the [0, 1] scale


def shift_1px(x: torch.Tensor) -> torch.Tensor:
    """Content moved one pixel right; the first column is repeated so the size stays."""
    return torch.cat([x[..., :1], x[..., :-1]], dim=-1)


def brighten(x: torch.Tensor) -> torch.Tensor:
    return (x + 2 * BRIGHTNESS).clamp(-1, 1)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"shift": shift_1px, "brightness": brighten}


@dataclass
class LayerAnalysis:
    name: str
    channels: int
    dead_channels: int
    diversity: float | None  # None when fewer than two channels are alive
    stability: dict[str, float]
    auc: float


@dataclass
class Analysis:
    images: int
    same_pairs: int
    different_pairs: int
    layers: list[LayerAnalysis]
    total_auc: float

    def to_json(self) -> dict:
        return asdict(self)


def read_folder(folder: Path, *, max_pixels: int, min_size: int) -> list[tuple[str, torch.Tensor]]:
    """Every image file directly in `folder`, sorted by name."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not paths:
        raise DataError(f"{folder}: no images ({images.SUPPORTED})")
    try:
        return [(p.name, images.load_image(p, max_pixels=max_pixels, min_size=min_size)) for p in paths]
    except images.ImageError as exc:
        raise DataError(str(exc)) from None


class _Moments:
    """Running first and second moments of channel vectors, for the correlation matrix."""

    def __init__(self, channels: int):
        self.count = 0
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64)

    def add(self, features: torch.Tensor) -> None:
        rows = features.double().permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        self.count += rows.shape[0]
        self.total += rows.sum(dim=0)
        self.outer += rows.T @ rows

    def diversity(self) -> tuple[float | None, int]:
        mean = self.total / self.count
        cov = self.outer / self.count - torch.outer(mean, mean)
        alive = cov.diagonal() > 1e-12
        dead = int((~alive).sum())
        if int(alive.sum()) < 2:
            return None, dead
        cov = cov[alive][:, alive]
        std = cov.diagonal().sqrt()
        corr = cov / torch.outer(std, std)
        off = ~torch.eye(len(std), dtype=torch.bool)
        return float(1 - corr[off].abs().mean()), dead


def auc(different: np.ndarray, same: np.ndarray) -> float:
    """P(a different pair is farther than a same pair), ties counting half (Mann-Whitney, mid-ranks)."""
    values = np.concatenate([different, same])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(1, len(values) + 1)
    ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]
    n_diff, n_same = len(different), len(same)
    return float((ranks[:n_diff].sum() - n_diff * (n_diff + 1) / 2) / (n_diff * n_same))


def _relative_change(a: Features, b: Features) -> list[torch.Tensor]:
    return [(y - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp(min=1e-12)
            for x, y in zip(a.layers, b.layers)]


def analyse(model: LPIPS, named: list[tuple[str, torch.Tensor]], *, batch: int, device: torch.device,
            progress: Callable[[int], None] = lambda n: None) -> Analysis:
    """Images are batched by size; different pairs are neighbours (cyclic) within a batch of one size."""
    if batch < 2:
        raise ValueError(f"batch must be >= 2 to form different pairs, got {batch}")
    moments = [_Moments(c) for c in PRESETS[model.net].channels]
    change: dict[str, list[list[torch.Tensor]]] = {name: [] for name in AUGMENTATIONS}
    same, different = [], []
    for chunk in _chunks(named, batch):
        x = torch.stack(chunk).to(device)
        base = model.features(x, with_stats=False)
        for m, layer in zip(moments, base.layers):
            m.add(layer.cpu())
        for name, augment in AUGMENTATIONS.items():
            moved = model.features(augment(x), with_stats=False)
            change[name].append([c.cpu() for c in _relative_change(base, moved)])
            same.append(model.compare(base, moved).layers.cpu())
        if len(chunk) > 1:
            different.append(model.compare(base, base.take(torch.roll(torch.arange(len(chunk)), 1))).layers.cpu())
        progress(len(chunk))
    if not different:
        raise DataError("discriminability needs at least two images of the same size")
    same_d, diff_d = torch.cat(same).double().numpy(), torch.cat(different).double().numpy()
    layers = []
    for i, (name, m) in enumerate(zip(model.taps, moments)):
        diversity, dead = m.diversity()
        stability = {aug: float(torch.cat([p[i] for p in parts]).mean()) for aug, parts in change.items()}
        layers.append(LayerAnalysis(name, m.total.numel(), dead, diversity, stability, auc(diff_d[:, i], same_d[:, i])))
    return Analysis(len(named), len(same_d), len(diff_d), layers, auc(diff_d.sum(axis=1), same_d.sum(axis=1)))


def _chunks(named: list[tuple[str, torch.Tensor]], batch: int):
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for _, tensor in named:
        by_shape.setdefault(tuple(tensor.shape), []).append(tensor)
    for group in by_shape.values():
        for start in range(0, len(group), batch):
            yield group[start:start + batch]


def bar_chart(title: str, labels: list[str], series: dict[str, list[float | None]], *, top: float = 1.0) -> str:
    """An inline SVG bar chart: one group of bars per label, one bar per series; missing values are skipped."""
    width, height, pad, bar = 560, 220, 40, 18
    colours = ["#3b6ea5", "#d9822b", "#5a9e4b"]
    group = bar * len(series) + 12
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
              f'aria-label="{html.escape(title)}">'),
             f'<text x="{pad}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - 10}" y2="{height - pad}" stroke="#444"/>',
             f'<text x="4" y="{pad - 6}" font-size="10">{top:g}</text>']
    plot = height - 2 * pad
    for i, label in enumerate(labels):
        x0 = pad + 10 + i * group
        for j, (name, values) in enumerate(series.items()):
            value = values[i]
            if value is None:
                continue
            h = plot * max(0.0, min(value, top)) / top
            parts.append(f'<rect x="{x0 + j * bar}" y="{height - pad - h:.1f}" width="{bar - 2}" height="{h:.1f}" '
                         f'fill="{colours[j % len(colours)]}"><title>{html.escape(name)} {value:.4f}</title></rect>')
        parts.append(f'<text x="{x0}" y="{height - pad + 14}" font-size="10">{html.escape(label)}</text>')
    for j, name in enumerate(series):
        parts.append(f'<text x="{width - 150}" y="{30 + 14 * j}" font-size="11" '
                     f'fill="{colours[j % len(colours)]}">{html.escape(name)}</text>')
    return "".join(parts) + "</svg>"


def html_report(analysis: Analysis, *, title: str, provenance: dict[str, str]) -> str:
    """A self-contained page: a provenance line, the table and three inline SVG charts."""
    names = [layer.name for layer in analysis.layers]
    rows = "".join(
        f"<tr><td>{html.escape(layer.name)}</td><td>{layer.channels}</td><td>{layer.dead_channels}</td>"
        f"<td>{_fmt(layer.diversity)}</td>" + "".join(f"<td>{v:.4f}</td>" for v in layer.stability.values())
        + f"<td>{layer.auc:.4f}</td></tr>" for layer in analysis.layers)
    stability_head = "".join(f"<th>stability: {html.escape(n)}</th>" for n in AUGMENTATIONS)
    charts = [
        bar_chart("Diversity (1 - mean |channel correlation|)", names,
                  {"diversity": [layer.diversity for layer in analysis.layers]}),
        bar_chart("Relative feature change under augmentation", names,
                  {n: [layer.stability[n] for layer in analysis.layers] for n in AUGMENTATIONS},
                  top=max([1e-9] + [v for layer in analysis.layers for v in layer.stability.values()])),
        bar_chart("AUC: different vs same pairs", names, {"auc": [layer.auc for layer in analysis.layers]}),
    ]
    meta = ", ".join(f"{html.escape(k)} {html.escape(str(v))}" for k, v in provenance.items())
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{meta}; {analysis.images} images, {analysis.same_pairs} same pairs, "
            f"{analysis.different_pairs} different pairs; total-distance AUC {analysis.total_auc:.4f}</p>"
            f"<table><tr><th>layer</th><th>channels</th><th>dead</th><th>diversity</th>{stability_head}"
            f"<th>AUC</th></tr>{rows}</table>" + "".join(f"<p>{c}</p>" for c in charts) + "</body></html>")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
