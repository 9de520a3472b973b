"""Small BAPPS-format sets with judgements from known distortion strengths, for CI and smoke tests.

The simulated observer ranks a distortion by its level alone: blur level k and noise level k are
equally bad, and a lower level is always preferred. So in 2AFC, judge = 1 when p1's level is lower
than p0's, 0 when higher, 0.5 when equal; in JND, the fraction who see no difference is JND_SAME[level]
(level 0: p1 is p0). Deep-feature distances do not rank blur against noise this way, which is what
training can learn and what keeps the scores away from 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BLUR_SIGMAS = (0.6, 1.0, 1.6, 2.4)  # px, levels 1..4
NOISE_STDS = (0.03, 0.06, 0.10, 0.15)  # in [0, 1] units, levels 1..4
JND_SAME = (1.0, 0.75, 0.25, 0.0)  # fraction judging "same" at level 0 (identical), 1, 2, 3


def reference(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) image in [0, 1]: smooth colour field, a few flat rectangles and fine texture."""
    coarse = rng.random((3, 6, 6))
    grid = np.linspace(0, 5, size)
    field = np.stack([_bilinear(c, grid) for c in coarse], axis=-1)
    for _ in range(3):
        y, x = rng.integers(0, size - 8, 2)
        h, w = rng.integers(6, size // 2, 2)
        field[y:y + h, x:x + w] = rng.random(3)
    return np.clip(field + 0.05 * rng.standard_normal((size, size, 1)), 0, 1)


def _bilinear(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    rows = np.stack([np.interp(grid, np.arange(values.shape[1]), row) for row in values])
    return np.stack([np.interp(grid, np.arange(values.shape[0]), col) for col in rows.T], axis=1)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = image
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="reflect")
        out = sum(w * np.take(padded, range(i, i + image.shape[axis]), axis=axis) for i, w in enumerate(taps))
    return out


def noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image + std * rng.standard_normal(image.shape), 0, 1)


def distort(image: np.ndarray, kind: str, level: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "blur":
        return blur(image, BLUR_SIGMAS[level - 1])
    return noise(image, NOISE_STDS[level - 1], rng)


def write_2afc(root: Path, *, n: int, seed: int, size: int = 64, kinds: tuple[str, ...] = ("blur", "noise")) -> Path:
    """n triplets: p0 and p1 are the reference under a random (kind, level) each."""
    rng = np.random.default_rng(seed)
    for folder in ("ref", "p0", "p1", "judge"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ref = reference(rng, size)
        kind0, kind1 = rng.choice(kinds, 2)
        level0, level1 = rng.integers(1, 5, 2)
        judge = 1.0 if level1 < level0 else 0.0 if level1 > level0 else 0.5
        stem = f"{i:06d}"
        write_png(root / "ref" / f"{stem}.png", ref)
        write_png(root / "p0" / f"{stem}.png", distort(ref, kind0, level0, rng))
        write_png(root / "p1" / f"{stem}.png", distort(ref, kind1, level1, rng))
        np.save(root / "judge" / f"{stem}.npy", np.array([judge], dtype=np.float32))
    return root


def write_jnd(root: Path, *, n: int, seed: int, size: int = 64, kinds: tuple[str, ...] = ("blur", "noise")) -> Path:
    """n pairs: p1 is p0 under a random kind at level i % 4 (level 0: unchanged); same = JND_SAME[level]."""
    rng = np.random.default_rng(seed)
    for folder in ("p0", "p1", "same"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p0 = reference(rng, size)
        kind, level = rng.choice(kinds), i % len(JND_SAME)
        stem = f"{i:06d}"
        write_png(root / "p0" / f"{stem}.png", p0)
        write_png(root / "p1" / f"{stem}.png", distort(p0, kind, level, rng) if level else p0)
        np.save(root / "same" / f"{stem}.npy", np.array([JND_SAME[level]], dtype=np.float32))
    return root


def write_png(path: Path, image: np.ndarray) -> None:
    """An (H, W, 3) image in [0, 1] as 8-bit RGB, rounded to the nearest code."""
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
