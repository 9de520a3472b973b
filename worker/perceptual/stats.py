"""Feature-quality statistics of one layer's raw activations, per image."""

from __future__ import annotations

import torch

from gate.vocabulary import STAT_KEYS

SPARSE = 1e-6


def layer_stats(x: torch.Tensor) -> list[dict[str, float]]:
    """For each image of a (N,C,H,W) batch: sparsity (fraction |x| < 1e-6), mean, std, min, max,
    and the count of NaN/Inf values; moments are over finite values only."""
    flat = _rows(x.detach().float())
    mean = flat.mean(dim=1)
    scratch = flat - mean[:, None]  # the one layer-sized temporary: fresh memory costs page faults
    std = scratch.square_().mean(dim=1).sqrt_()  # two passes: several times faster than std_mean
    if torch.isfinite(std).all():  # NaN/Inf anywhere in a row would make its std non-finite
        low, high = flat.amin(dim=1), flat.amax(dim=1)  # on the CPU several times faster than aminmax
        nonfinite = torch.zeros(flat.shape[0], dtype=torch.long)
    else:
        mean, std, low, high, nonfinite = _masked_moments(flat, torch.isfinite(flat))
    near_zero = torch.abs(flat, out=scratch).lt_(SPARSE)  # a float mask sums far faster than a bool one
    sparsity = near_zero.sum(dim=1) / flat.shape[1]
    rows = zip(sparsity.tolist(), mean.tolist(), std.tolist(), low.tolist(), high.tolist(), nonfinite.tolist())
    return [dict(zip(STAT_KEYS, row, strict=True)) for row in rows]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C*H*W) without a copy: statistics ignore element order, so a channels_last tensor is read
    in its own memory order."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], -1)


def _masked_moments(flat: torch.Tensor, finite: torch.Tensor):
    zero = torch.zeros_like(flat)
    n = finite.sum(dim=1).clamp(min=1)
    mean = torch.where(finite, flat, zero).sum(dim=1) / n
    var = (torch.where(finite, flat - mean[:, None], zero) ** 2).sum(dim=1) / n
    big = torch.finfo(flat.dtype).max
    low = torch.where(finite, flat, torch.full_like(flat, big)).amin(dim=1)
    high = torch.where(finite, flat, torch.full_like(flat, -big)).amax(dim=1)
    return mean, var.sqrt(), low, high, (~finite).sum(dim=1)
