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

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from worker.tone import block_means

Box = list[int]
Found = tuple[dict[str, float], dict[str, Box]]
Positions = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (n, y, x) of pixels in a (N,3,H,W) batch
Test = Callable[[torch.Tensor, torch.Tensor, Positions, torch.Tensor], torch.Tensor]

STEP = 2 / 255  # one 8-bit level in the [-1, 1] range the decoder produces
FIREFLY_SIGMAS, FIREFLY_FLOOR = 7.0, 32.0
OUTLIER_SIGMAS, OUTLIER_FLOOR, OUTLIER_RADIUS = 4.5, 32.0, 2
FLAT_STD, FLAT_REFERENCE_STD, FLAT_BLOCK = 2.0, 8.0, 8
FLAT_SAMPLED_ABOVE = 256  # larger frames are sampled every (shorter side // this) pixels for `flat`
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

    A firefly is brighter than the reference's pixel, an outlier beyond the reference's range around it:
    either way some channel differs from the reference's by the guard's level. So the guards' own tests
    run only at the few pixels that do, never over the frame, and what they find is kept as positions."""
    rows = len(cands)
    kept = None if ignored is None else ~ignored[:, 0]
    with torch.inference_mode():
        difference = cands - refs  # the one frame-sized temporary
        step = max(1, round((difference[0].numel() / NOISE_SAMPLES) ** 0.5))
        sample, kept_sample = difference[..., ::step, ::step], None if kept is None else kept[:, ::step, ::step]
        firefly_level = _levels(sample.mean(dim=1, keepdim=True), kept_sample, FIREFLY_SIGMAS, FIREFLY_FLOOR)
        outlier_level = _levels(sample, kept_sample, OUTLIER_SIGMAS, OUTLIER_FLOOR)
        # a guard trips only where some channel differs by its level: the few such pixels are tested exactly
        level = torch.minimum(firefly_level, outlier_level)[:, None, None]
        suspects = _suspects(difference.abs_().amax(dim=1) > level, kept)
        hot = _found(_isolated, refs, cands, suspects, firefly_level)
        outside = _found(_outside_range, refs, cands, suspects, outlier_level)
        flat = _structure(cands, kept) < FLAT_STD * STEP
        if flat.any():  # rare: only then is the reference's structure needed
            flat &= _structure(refs, kept) > FLAT_REFERENCE_STD * STEP
        counts = torch.stack([torch.bincount(hot[0], minlength=rows), torch.bincount(outside[0], minlength=rows),
                              flat.long()], dim=1)
        boxes = torch.cat([_boxes(hot, rows), _boxes(outside, rows)], dim=1)
    found = []
    for (fireflies, outliers, is_flat), box in zip(counts.tolist(), boxes.tolist()):
        scores = {"fireflies": float(fireflies), "flat": float(is_flat), "outliers": float(outliers)}
        regions = {name: box[4 * i:4 * i + 4] for i, (name, n) in enumerate((("fireflies", fireflies),
                                                                             ("outliers", outliers))) if n}
        found.append((scores, regions))
    return found


def _suspects(candidates: torch.Tensor, kept: torch.Tensor | None) -> Positions:
    n, y, x = (candidates if kept is None else candidates & kept).nonzero(as_tuple=True)
    return n, y, x


def _found(test: Test, refs: torch.Tensor, cands: torch.Tensor, suspects: Positions, level: torch.Tensor) -> Positions:
    """The suspects that pass `test`, a chunk at a time (a gross regression may make most of a frame one)."""
    if not len(suspects[0]):  # the usual case: no pixel differs by a guard's level
        return suspects
    found = [_where(test(refs, cands, chunk, level[chunk[0]]), chunk)
             for chunk in zip(*(index.split(CHUNK) for index in suspects))]
    n, y, x = (torch.cat(parts) for parts in zip(*found)) if found else suspects
    return n, y, x


def _where(passed: torch.Tensor, positions: Positions) -> Positions:
    n, y, x = positions
    return n[passed], y[passed], x[passed]


def _isolated(refs: torch.Tensor, cands: torch.Tensor, at: Positions, level: torch.Tensor) -> torch.Tensor:
    """(K,) bool: brighter than the reference's pixel and than the mean of its own 8 neighbours (edges
    repeated), both on average over the channels and by `level`."""
    n, y, x = at
    centre = cands[n, :, y, x]
    around = _window(cands, at, 1).sum(dim=1) - centre
    return ((centre - refs[n, :, y, x]).mean(dim=1) > level) & ((centre - around / 8).mean(dim=1) > level)


def _outside_range(refs: torch.Tensor, cands: torch.Tensor, at: Positions, level: torch.Tensor) -> torch.Tensor:
    """(K,) bool: a channel beyond the reference's min..max in the window around it by `level`."""
    n, y, x = at
    window = _window(refs, at, OUTLIER_RADIUS)
    cand, margin = cands[n, :, y, x], level[:, None]
    return ((cand > window.amax(dim=1) + margin) | (cand < window.amin(dim=1) - margin)).any(dim=1)


def _window(image: torch.Tensor, at: Positions, radius: int) -> torch.Tensor:
    """(K, (2 radius + 1)**2, C): the pixels of a (N,C,H,W) image around each position, edges repeated."""
    n, y, x = at
    height, width = image.shape[-2:]
    side = 2 * radius + 1
    reach = torch.arange(-radius, radius + 1, device=image.device)
    rows = (y[:, None, None] + reach[:, None]).clamp_(0, height - 1).expand(-1, side, side).flatten(1)
    cols = (x[:, None, None] + reach[None, :]).clamp_(0, width - 1).expand(-1, side, side).flatten(1)
    return image[n[:, None], :, rows, cols]


def _levels(sample: torch.Tensor, kept: torch.Tensor | None, sigmas: float, floor: float) -> torch.Tensor:
    """(N,) thresholds: `sigmas` robust noise sigmas of a (N,C,h,w) sample of a difference, at least `floor`
    steps; `kept` (N,h,w) leaves ignored samples out."""
    magnitude = sample.abs()
    if kept is not None:
        magnitude = torch.where(kept[:, None], magnitude, torch.nan)
    sigma = magnitude.flatten(1).nanmedian(dim=1).values.nan_to_num_(nan=0.0) * MAD_TO_SIGMA
    return torch.clamp(sigma * sigmas, min=floor * STEP)


def _structure(images: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """The std of the brightness of each (N,3,H,W) frame's block means (blocks with an ignored pixel left
    out): sampling noise averages away in a block of 8x8 samples, the structure of a scene does not; a
    large frame is sampled every `step` pixels. 0 for one block."""
    step = max(1, min(images.shape[-2:]) // FLAT_SAMPLED_ABOVE)
    block = min(FLAT_BLOCK, *(side // step for side in images.shape[-2:]))
    means = block_means(images[..., ::step, ::step], block).mean(dim=1).flatten(1)
    if kept is None:
        return means.std(dim=1, unbiased=False)
    usable = (-F.max_pool2d(-kept[:, None, ::step, ::step].float(), block)).flatten(1)  # 1: the block is all kept
    count = usable.sum(dim=1)
    average = (means * usable).sum(dim=1) / count.clamp(min=1)
    variance = (((means - average[:, None]) * usable) ** 2).sum(dim=1) / count.clamp(min=1)
    return torch.where(count > 1, variance.sqrt(), torch.zeros_like(variance))


def _boxes(found: Positions, rows: int) -> torch.Tensor:
    """(rows, 4) [x, y, width, height] around each frame's found positions (garbage where none)."""
    n, y, x = found
    if not len(n):  # the usual case: nothing found, so no row's box is read
        return torch.zeros((rows, 4), dtype=torch.long, device=n.device)

    def reduce(values: torch.Tensor, how: str, start: int) -> torch.Tensor:
        return torch.full((rows,), start, dtype=torch.long, device=n.device).scatter_reduce(0, n, values, how)

    x0, y0 = reduce(x, "amin", torch.iinfo(torch.long).max), reduce(y, "amin", torch.iinfo(torch.long).max)
    x1, y1 = reduce(x, "amax", -1), reduce(y, "amax", -1)
    return torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)


def _box_np(found: np.ndarray) -> Box:
    ys, xs = np.nonzero(found)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
