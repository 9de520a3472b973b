"""What a candidate ignores, as pixels: the rectangles and mask images of the run's mask rules
(gate.scoring) rasterised to one (H, W) bool array at the candidate's size, True = ignored."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gate.scoring import Rect
from gate.vocabulary import AREA_LEVEL, REGION_PX
from worker import images


@dataclass(frozen=True)
class Ignore:
    """One candidate's ignored areas: rectangles in its pixels, mask images (resolved paths; white = ignored)."""

    rects: tuple[Rect, ...] = ()
    masks: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Scoring:
    """How one call's pairs are compared and scored: the worst-region window, the area level, what each
    candidate ignores (by its path as given in the pairs), and the run's resize and EXR exposure
    (None: the engine's own, as `compare` configures it)."""

    region_px: int = REGION_PX
    area_level: float = AREA_LEVEL
    ignore: Mapping[Path, Ignore] = field(default_factory=dict)
    resize: images.Resize | None = None
    exposure: float | None = None


MaskLoader = Callable[[Path], np.ndarray]


def load_mask(path: Path, *, max_pixels: int) -> np.ndarray:
    """A mask image (any format `images.load_image` reads) as (H, W) bool: True where it is lighter than
    mid grey (the mean of its channels), so white is ignored, black kept."""
    pixels = images.load_image(path, max_pixels=max_pixels, min_size=1)
    return pixels.mean(dim=0).numpy() > 0


def rasterise(ignore: Ignore, size: tuple[int, int], load: MaskLoader) -> np.ndarray:
    """(H, W) bool of the pixels `ignore` covers in an image of `size` (H, W): rectangles clipped to the
    image, mask images scaled to it (nearest pixel)."""
    height, width = size
    ignored = np.zeros((height, width), dtype=bool)
    for x, y, w, h in ignore.rects:
        ignored[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = True
    for path in ignore.masks:
        ignored |= resized(load(path), size)
    return ignored


def resized(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) bool mask at `size` (H, W), nearest pixel: a mask image at its candidate's size, or a
    candidate's ignored pixels at the size it is compared at."""
    if mask.shape == size:
        return mask
    rows = np.arange(size[0]) * mask.shape[0] // size[0]
    cols = np.arange(size[1]) * mask.shape[1] // size[1]
    return mask[rows[:, None], cols[None, :]]
