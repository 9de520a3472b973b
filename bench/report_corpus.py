"""A judged run of many 1920x1080 render pairs as the HTML report receives it, with the pictures the
worker would have stored: WebP previews of render-like frames (colour fields, texture, hard-edged
shapes, sampling noise as it survives the shrink) made by the worker's own encoder, and heatmaps by
worker.heatmap on the fixed scale (sampling-noise levels, a saturated patch on the failing pairs).
Every pair's pictures differ, as a real run's do, so the browser decodes each. Used by bench/report.py
and the report size test."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from gate.vocabulary import THUMBNAIL_PX
from worker.heatmap import heatmap_png
from worker.previews import HEATMAP_PX, encode_preview

FRAME = (1920, 1080)
SHOWN = (THUMBNAIL_PX, THUMBNAIL_PX * FRAME[1] // FRAME[0])  # the previews' size: 320x180
ALEX_LAYERS = ("features.1", "features.4", "features.7", "features.9", "features.11")
PATCH = (700, 300, 256, 256)  # the damage of a failing pair, in frame pixels


def frame(seed: int, size: tuple[int, int], noise: float, sampler: int = 0) -> np.ndarray:
    """A render-like (height, width, 3) uint8 frame: the scene of `seed`, sampled with `noise` levels
    by the sampler seed `sampler`."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / height
    image = np.empty((height, width, 3))
    for channel in range(3):
        fx, fy, phase = rng.uniform(0.5, 2, 3)
        image[..., channel] = 110 + 60 * np.sin(2 * np.pi * (fx * x + phase)) * np.cos(2 * np.pi * fy * y)
    cell = max(1, height // 64)
    texture = np.kron(rng.normal(0, 1, (height // cell + 1, width // cell + 1)), np.ones((cell, cell)))
    texture = texture[:height, :width]
    texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1) + np.roll(texture, (1, 1), (0, 1))) / 4
    image += 18 * texture[..., None]  # cells softened at their edges, as a shrink softens them
    for _ in range(8):
        cx, cy, radius = rng.uniform(0, width / height), rng.uniform(0, 1), rng.uniform(0.04, 0.12)
        image[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = rng.uniform(30, 225, 3)
    image += np.random.default_rng((seed, sampler)).normal(0, noise, image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def heatmap(seed: int, failing: bool) -> bytes:
    """A heatmap as the worker stores it: sampling noise's levels (0.02-0.15), a saturated patch if failing."""
    rng = np.random.default_rng(seed)
    width, height = HEATMAP_PX, HEATMAP_PX * FRAME[1] // FRAME[0]
    smooth = np.kron(rng.uniform(0.02, 0.12, (height // 5 + 1, width // 5 + 1)), np.ones((5, 5)))
    values = smooth[:height, :width] + rng.uniform(0, 0.06, (height, width))
    if failing:
        x, y, w, h = (round(v * width / FRAME[0]) for v in PATCH)
        values[y:y + h, x:x + w] = rng.uniform(0.6, 1.4, (h, w))
    return heatmap_png(torch.from_numpy(values.astype(np.float32)), frame=FRAME)


def run(pairs: int = 1000, *, failing_every: int = 20, root: str = "/renders") -> dict[str, Any]:
    """The run: one pair in `failing_every` fails with a located region; the rest pass."""
    shown_noise = 14 / 6  # 14 levels of sampling noise, averaged over the 6x6 pixels a preview pixel holds
    built = []
    for index in range(pairs):
        failing = index % failing_every == 0
        reference, candidate = (frame(index, SHOWN, shown_noise, sampler) for sampler in (1, 2))
        if failing:
            x, y, w, h = (round(v * SHOWN[0] / FRAME[0]) for v in PATCH)
            candidate[y:y + h, x:x + w] = 120
        distance = 0.31 if failing else 0.04 + 0.03 * (index % 7) / 7
        name = f"seq{index // 100:02d}/shot_{index:04d}.png"
        built.append({
            "ref": f"ref/{name}", "cand": f"cand/{name}", "name": name, "status": "done",
            "verdict": "fail" if failing else "pass", "distance": distance, "seconds": 0.8,
            "scores": {"mean": distance, "region": 1.1 if failing else 0.14},
            "reasons": ["distance", "region"] if failing else [],
            "where": list(PATCH) if failing else None, "worst_region": list(PATCH), "cand_size": list(FRAME),
            "layers": [{"name": layer, "distance": distance / len(ALEX_LAYERS)} for layer in ALEX_LAYERS],
            "ref_thumb": encode_preview(Image.fromarray(reference)),
            "cand_thumb": encode_preview(Image.fromarray(candidate)),
            "heatmap_png": heatmap(index, failing),
            "ref_file": f"{root}/ref/{name}", "cand_file": f"{root}/cand/{name}",
        })
    return {"run": 1, "suite": "renders-1080p", "verdict": "fail", "threshold": 0.1, "net": "alex",
            "weights_version": "alex-0.1", "policy": "0" * 64,
            "meta": {"commit": "0123abcd", "pipeline": "4242", "author": "ci"}, "pairs": built}
