"""Pixel guards: cheap checks on the decoded pixels for what LPIPS alone may miss, each a score by name
(gate.vocabulary.SCORES) and, where it has one, a location [x, y, width, height].

- `nonfinite`: NaN/Inf pixels of a float candidate (EXR, float TIFF), counted at decode; they are then
  set to 0 (mid grey in [-1, 1]) so the network scores the rest of the frame. A reference with
  non-finite pixels is still refused (ImageError "nonfinite"): it is the standard, not the suspect.
- `fireflies`: isolated over-bright candidate pixels: brighter than the reference's pixel AND than the
  mean of their own 8 neighbours, both by more than FIREFLY_SIGMAS noise sigmas (at least FIREFLY_FLOOR).
- `outliers`: candidate samples outside the reference's local colour range (its 5x5 min..max per
  channel) by more than OUTLIER_SIGMAS noise sigmas (at least OUTLIER_FLOOR): a magenta NaN block, a
  colour the reference has nowhere near.
- `flat`: 1.0 when the candidate has no structure (the std of its 8x8 block means below FLAT_STD) while
  the reference clearly has (above FLAT_REFERENCE_STD), else 0.0; a whole-frame finding, no location.

The noise sigma is measured per pair, robustly (1.4826 x the median absolute difference on a subsample),
from the candidate-minus-reference difference: two renders of one scene with different sampling seeds
differ by their noise, so thresholds follow each suite's noise level. Levels are in 8-bit steps.
Fireflies, outliers and flat run batched on the device at batch assembly; ignored pixels (masks) count
for none of them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

Box = list[int]
Found = tuple[dict[str, float], dict[str, Box]]

STEP = 2 / 255  # one 8-bit level in the [-1, 1] range the decoder produces
FIREFLY_SIGMAS, FIREFLY_FLOOR = 7.0, 32.0
OUTLIER_SIGMAS, OUTLIER_FLOOR, OUTLIER_RADIUS = 4.5, 32.0, 2
FLAT_STD, FLAT_REFERENCE_STD, FLAT_BLOCK = 2.0, 8.0, 8
NOISE_SAMPLES = 2048  # per frame, evenly strided over it: enough to know the median to a few percent
CHUNK = 1 << 16  # suspects whose neighbourhoods are gathered at once
MAD_TO_SIGMA = 1.4826


def take_nonfinite(cand: torch.Tensor, ignored: np.ndarray | None = None) -> tuple[int, Box | None]:
    """The count and box of the (3,H,W) candidate's pixels with a non-finite channel, outside `ignored`
    (H,W); every non-finite sample becomes 0 in place. One sum when there are none."""
    pixels = cand.numpy()
    with np.errstate(invalid="ignore"):  # inf + -inf: NaN, which is what the sum is asked for
        if np.isfinite(pixels.sum()):
            return 0, None
    bad = ~np.isfinite(pixels)
    pixels[bad] = 0.0
    found = bad.any(axis=0)
    if ignored is not None:
        found &= ~ignored
    count = int(found.sum())
    return count, (_box_np(found) if count else None)


def pixel_guards(refs: torch.Tensor, cands: torch.Tensor, ignored: torch.Tensor | None = None) -> list[Found]:
    """Fireflies, outliers and flat for each pair of (N,3,H,W) batches in [-1, 1], `ignored` (N,1,H,W).

    Only the pixels that differ from the reference's by more than a guard's level can trip it, so each
    guard's neighbourhood test runs at those few positions, not over the frame."""
    kept = None if ignored is None else ~ignored[:, 0]
    with torch.inference_mode():
        lum_ref, lum_cand = refs.mean(dim=1), cands.mean(dim=1)
        brighter, difference = lum_cand - lum_ref, cands - refs
        firefly_level = _levels(brighter[:, None], kept, FIREFLY_SIGMAS, FIREFLY_FLOOR)
        outlier_level = _levels(difference, kept, OUTLIER_SIGMAS, OUTLIER_FLOOR)
        hot = _isolated(lum_cand, _kept(brighter > firefly_level[:, None, None], kept), firefly_level)
        far = (difference.abs_() > outlier_level[:, None, None, None]).any(dim=1)
        outside = _outside_range(refs, cands, _kept(far, kept), outlier_level)
        flat = (_structure(lum_cand, kept) < FLAT_STD * STEP) & (_structure(lum_ref, kept) > FLAT_REFERENCE_STD * STEP)
        counts = torch.stack([hot.flatten(1).sum(dim=1), outside.flatten(1).sum(dim=1), flat.long()], dim=1)
        boxes = torch.cat([_boxes(hot), _boxes(outside)], dim=1)
    found = []
    for (fireflies, outliers, is_flat), box in zip(counts.tolist(), boxes.tolist()):
        scores = {"fireflies": float(fireflies), "flat": float(is_flat), "outliers": float(outliers)}
        regions = {name: box[4 * i:4 * i + 4] for i, (name, n) in enumerate((("fireflies", fireflies),
                                                                             ("outliers", outliers))) if n}
        found.append((scores, regions))
    return found


def _kept(suspects: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    return suspects if kept is None else suspects & kept


def _isolated(lum: torch.Tensor, suspects: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """(N,H,W) bool: the suspects brighter than the mean of their 8 neighbours (edges repeated) by `level`."""
    found = torch.zeros_like(suspects)
    n, y, x = suspects.nonzero(as_tuple=True)
    if len(n):
        around = sum(_at(lum, n, y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
        isolated = lum[n, y, x] - around / 8 > level[n]
        found[n[isolated], y[isolated], x[isolated]] = True
    return found


def _outside_range(refs: torch.Tensor, cands: torch.Tensor, suspects: torch.Tensor,
                   level: torch.Tensor) -> torch.Tensor:
    """(N,H,W) bool: the suspects with a channel beyond the reference's min..max around them by `level`,
    a chunk of suspects at a time (a gross regression may make most of a frame one)."""
    found = torch.zeros_like(suspects)
    reach = range(-OUTLIER_RADIUS, OUTLIER_RADIUS + 1)
    positions = suspects.nonzero(as_tuple=True)
    for start in range(0, len(positions[0]), CHUNK):
        n, y, x = (index[start:start + CHUNK] for index in positions)
        high = low = refs[n, :, y, x]
        for dy in reach:
            for dx in reach:
                values = _at(refs, n, y + dy, x + dx)
                high, low = torch.maximum(high, values), torch.minimum(low, values)
        cand, margin = cands[n, :, y, x], level[n, None]
        out = ((cand > high + margin) | (cand < low - margin)).any(dim=1)
        found[n[out], y[out], x[out]] = True
    return found


def _at(image: torch.Tensor, n: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """image[n, ..., y, x] with y and x clamped into the frame: (K,) of (N,H,W), (K,C) of (N,C,H,W)."""
    height, width = image.shape[-2:]
    y, x = y.clamp(0, height - 1), x.clamp(0, width - 1)
    return image[n, y, x] if image.dim() == 3 else image[n, :, y, x]


def _levels(difference: torch.Tensor, kept: torch.Tensor | None, sigmas: float, floor: float) -> torch.Tensor:
    """(N,) thresholds: `sigmas` robust noise sigmas of a (N,C,H,W) difference, at least `floor` steps."""
    stride = max(1, round((difference[0].numel() / NOISE_SAMPLES) ** 0.5))
    sample = difference[:, :, ::stride, ::stride].abs()
    if kept is not None:
        sample = torch.where(kept[:, None, ::stride, ::stride], sample, torch.nan)
    sigma = sample.flatten(1).nanmedian(dim=1).values.nan_to_num_(nan=0.0) * MAD_TO_SIGMA
    return torch.clamp(sigma * sigmas, min=floor * STEP)


def _structure(lum: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """The std of each (H,W) frame's block means (blocks with an ignored pixel left out): sampling noise
    averages away in a block, the structure of a scene does not. 0 for fewer than two blocks."""
    block = min(FLAT_BLOCK, *lum.shape[-2:])
    means = F.avg_pool2d(lum[:, None], block).flatten(1)
    if kept is None:
        return means.std(dim=1, unbiased=False) if means.shape[1] > 1 else torch.zeros(len(lum), device=lum.device)
    usable = (-F.max_pool2d(-kept[:, None].float(), block)).flatten(1)  # 1 where the whole block is kept
    count = usable.sum(dim=1)
    average = (means * usable).sum(dim=1) / count.clamp(min=1)
    variance = (((means - average[:, None]) * usable) ** 2).sum(dim=1) / count.clamp(min=1)
    return torch.where(count > 1, variance.sqrt(), torch.zeros_like(variance))


def _boxes(found: torch.Tensor) -> torch.Tensor:
    """(N,H,W) bool -> (N,4) [x, y, width, height] of each frame's found pixels (garbage where none)."""
    rows, cols = found.any(dim=2), found.any(dim=1)
    y0, x0 = rows.int().argmax(dim=1), cols.int().argmax(dim=1)
    y1 = rows.shape[1] - rows.flip(1).int().argmax(dim=1)
    x1 = cols.shape[1] - cols.flip(1).int().argmax(dim=1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=1)


def _box_np(found: np.ndarray) -> Box:
    ys, xs = np.nonzero(found)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
