"""The `tone` guard: the largest shift of a region's mean colour, in 8-bit levels, with its box.

Sampling noise averages out over a region (sigma / side of it: well under one level at 32 px), so a
region whose mean moved is a change of tone, not noise: a colour cast, an exposure shift, banding.
LPIPS sees such changes weakly; their mean colour does not hide them. Windows of `window_px` pixels
at half-window strides; ignored pixels (masks) are left out of both means."""

from __future__ import annotations

import torch
import torch.nn.functional as F

STEP = 2 / 255  # one 8-bit level in the [-1, 1] range the decoder produces

Box = list[int]


def tone_shifts(refs: torch.Tensor, cands: torch.Tensor, window_px: int,
                ignored: torch.Tensor | None = None) -> list[tuple[float, Box]]:
    """(the largest per-channel shift of a window's mean, in levels; its box) for each pair of
    (N,3,H,W) batches in [-1, 1]; `ignored` is (N,1,H,W) bool."""
    height, width = cands.shape[-2:]
    side = max(1, min(window_px, height, width))
    stride = max(1, side // 2)
    with torch.inference_mode():
        difference = cands - refs
        if ignored is None:  # every window whole: its share is 1, so the mean is the pooled difference
            shift = window_means(difference, side, stride).abs_().amax(dim=1)  # (N, h, w)
        else:
            kept = (~ignored).to(difference.dtype)
            total = window_means(difference * kept, side, stride)
            share = window_means(kept, side, stride)
            shift = (total / share.clamp(min=1e-6)).abs().amax(dim=1) * (share[:, 0] >= 0.5)
        best = shift.flatten(1).argmax(dim=1)
        values = shift.flatten(1).gather(1, best[:, None])[:, 0] / STEP
    columns = shift.shape[-1]
    found = []
    for value, index in zip(values.tolist(), best.tolist()):
        y, x = (index // columns) * stride, (index % columns) * stride
        found.append((value, [x, y, min(side, width - x), min(side, height - y)]))
    return found


def window_means(images: torch.Tensor, side: int, stride: int) -> torch.Tensor:
    """`F.avg_pool2d(images, side, stride)`. When `side` is a whole number of strides, from the sums of
    stride-sized blocks: those are taken over the batch's own memory, where pooling a channels_last batch
    goes element by element over its 3-wide channel dimension. One division, as pooling does: a mask's
    share of exactly one half stays one half."""
    if side % stride:
        return F.avg_pool2d(images, side, stride)
    return F.avg_pool2d(block_sums(images, stride), side // stride, 1, divisor_override=1).div_(side * side)


def block_means(images: torch.Tensor, side: int) -> torch.Tensor:
    """`F.avg_pool2d(images, side)` of a (N,C,H,W) batch: the means of its side x side blocks."""
    return block_sums(images, side).div_(side * side)


def block_sums(images: torch.Tensor, side: int) -> torch.Tensor:
    """The sums of a (N,C,H,W) batch's side x side blocks, rows and columns past the last whole block left out."""
    n, channels, height, width = images.shape
    rows, cols = height // side, width // side
    pixels = images[..., :rows * side, :cols * side].permute(0, 2, 3, 1)  # a view when channels_last
    column_sums = pixels.reshape(n, rows, side, cols, side * channels).sum(dim=2)
    return column_sums.view(n, rows, cols, side, channels).sum(dim=3).permute(0, 3, 1, 2)


def levels_lost(refs: torch.Tensor, cands: torch.Tensor, window_px: int,
                ignored: torch.Tensor | None = None, ref_of: torch.Tensor | None = None) -> list[tuple[float, Box]]:
    """(the largest share of a window's distinct 8-bit levels that the candidate lost; its box) for each
    pair of (N,3,H,W) batches in [-1, 1], over non-overlapping windows of `window_px`, per channel.
    `ref_of` (N,) indexes each candidate's reference in `refs` when references repeat: each is counted once.

    Banding, posterisation and flattened texture keep a region's mean but lose its levels: quantised to 8
    levels, a noisy region that held 60 distinct values holds 8. Noise alone keeps the count within a few
    percent. Windows with ignored pixels are left out."""
    height, width = cands.shape[-2:]
    side = max(1, min(window_px, height, width))
    rows, cols = height // side, width // side
    with torch.inference_mode():
        counts = [_distinct(image[..., :rows * side, :cols * side], side) for image in (refs, cands)]
        if ref_of is not None:
            counts[0] = counts[0][ref_of]
        lost = ((counts[0] - counts[1]).clamp(min=0) / counts[0].clamp(min=1)).amax(dim=1)  # (N, windows)
        if ignored is not None:
            hidden = ignored[:, 0, :rows * side, :cols * side].reshape(-1, rows, side, cols, side).any(dim=(2, 4))
            lost = lost * ~hidden.flatten(1)
        best = lost.argmax(dim=1)
        values = lost.gather(1, best[:, None])[:, 0]
    return [(float(value), [(index % cols) * side, (index // cols) * side, side, side])
            for value, index in zip(values.tolist(), best.tolist())]


def _distinct(images: torch.Tensor, side: int) -> torch.Tensor:
    """(N, 3, windows): how many distinct 8-bit levels each channel takes in each side x side window,
    for the whole batch in one count. Keys are built on rows of (W x C) values, a channels_last batch's
    own memory order: the offsets broadcast over whole rows, where over the 3-wide channel dimension they
    would go element by element. In int32 where they fit: at small sizes building them costs more than counting."""
    n, channels, height, width = images.shape
    windows = (height // side) * (width // side)
    bins = n * channels * windows * 256
    kind = torch.int32 if bins <= torch.iinfo(torch.int32).max else torch.long
    window = (torch.arange(height, device=images.device, dtype=kind)[:, None] // side * (width // side)
              + torch.arange(width, device=images.device, dtype=kind)[None, :] // side)  # (H, W) window index
    plane = torch.arange(channels, device=images.device, dtype=kind) * windows
    first_bin = (window[..., None] + plane).mul_(256).view(1, height, width * channels)  # of each value of a row
    image = (torch.arange(n, device=images.device, dtype=kind) * (channels * windows * 256)).view(n, 1, 1)
    rows = images.permute(0, 2, 3, 1).reshape(n, height, width * channels).float()
    keys = ((rows + 1) * 127.5).round_().clamp_(0, 255).to(kind).add_(first_bin).add_(image)
    present = torch.bincount(keys.view(-1), minlength=bins) > 0
    return present.view(n, channels, windows, 256).sum(dim=3).float()
