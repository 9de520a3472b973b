"""Procedural render-like frames for the score and guard tests: a textured scene (colour field, blurred
texture, hard-edged shapes, stripes), "rendered" with Gaussian sampling noise of a given sigma (8-bit
levels) and seed, so two renders of one scene differ the way two sampler seeds do; and damage to plant
in a candidate. Deterministic, numpy only."""

from __future__ import annotations

import numpy as np


def scene(seed: int, size: int = 256) -> np.ndarray:
    """(size, size, 3) float64 in [0, 255]: the noise-free scene."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    for channel in range(3):
        fx, fy, phase = rng.uniform(1, 3), rng.uniform(1, 3), rng.uniform(0, 1)
        image[..., channel] = 110 + 50 * np.sin(2 * np.pi * (fx * x + phase)) * np.cos(2 * np.pi * fy * y)
    texture = np.kron(rng.normal(0, 1, (size // 4 + 1, size // 4 + 1)), np.ones((4, 4)))[:size, :size]
    image += 20 * texture[..., None]
    for _ in range(6):
        cx, cy, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.12)
        image[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = rng.uniform(40, 215, 3)
    image[(y > 0.85) & (np.sin(2 * np.pi * 12 * x) > 0)] *= 0.6
    return np.clip(image, 0, 255)


def render(clean: np.ndarray, seed: int, sigma: float = 14.0) -> np.ndarray:
    """The scene as a renderer with `sigma` levels of sampling noise and this seed would give it: uint8."""
    noise = np.random.default_rng(seed).normal(0, sigma, clean.shape)
    return np.clip(clean + noise, 0, 255).round().astype(np.uint8)


def mid_tone(clean: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """The scene with a mid-grey textured patch at (x, y): damage planted there stands out the same way
    whatever the scene's colours happened to be."""
    patched = clean.copy()
    rng = np.random.default_rng(x * 7919 + y)
    patched[y:y + size, x:x + size] = 120 + rng.normal(0, 6, (size, size, 1))
    return patched


def hot_pixels(frame: np.ndarray, x: int, y: int, *, count: int = 12, area: int = 40, seed: int = 0) -> tuple:
    """A copy with `count` distinct single white pixels inside the `area`-pixel square at (x, y), no two
    adjacent; and their (rows, cols)."""
    rng = np.random.default_rng(seed)
    cells = rng.choice((area // 2) ** 2, size=count, replace=False)  # on a 2-pixel lattice: never adjacent
    rows, cols = y + 2 * (cells // (area // 2)), x + 2 * (cells % (area // 2))
    damaged = frame.copy()
    damaged[rows, cols] = 255
    return damaged, (rows, cols)


def to_tensor(frame: np.ndarray):
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1], as the decoder gives it."""
    import torch

    return torch.from_numpy(frame.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
