"""Feature-quality statistics of one layer's raw activations, per image."""

from __future__ import annotations

import torch

from gate.vocabulary import STAT_KEYS

SPARSE = 1e-6


def layer_stats(x: torch.Tensor) -> list[dict[str, float]]:
    """For each image of a (N,C,H,W) batch: sparsity (fraction |x| < 1e-6), mean, std, min, max, the
    count of NaN/Inf values, spatial_std (each channel's std over H and W, averaged over channels: a
    spatially empty image has none, however much its channels differ) and dead (the share of channels
    with |x| < 1e-6 at every position); moments are over finite values only."""
    x = x.detach().float()
    flat = _rows(x)
    positions = _per_channel(flat, x)
    channel_mean = positions.mean(dim=1)
    mean = channel_mean.mean(dim=1)  # every channel has H*W values: the mean of the means is the mean
    scratch = torch.empty_like(flat)  # the one layer-sized temporary: fresh memory costs page faults
    centred = _per_channel(scratch, x)
    variance = torch.sub(positions, channel_mean[:, None, :], out=centred).square_().mean(dim=1)  # two passes
    between = (channel_mean - mean[:, None]).square_().mean(dim=1)
    std = variance.mean(dim=1).add_(between).sqrt_()  # total variance: within channels plus between them
    if torch.isfinite(std).all():  # NaN/Inf anywhere in a row would make its std non-finite
        low, high = flat.amin(dim=1), flat.amax(dim=1)  # on the CPU several times faster than aminmax
        nonfinite = torch.zeros(flat.shape[0], dtype=torch.long)
    else:
        mean, std, low, high, nonfinite = _masked_moments(flat, torch.isfinite(flat))
        variance = _masked_channel_variance(positions)
    near_zero = torch.abs(flat, out=scratch).lt_(SPARSE)  # a float mask sums far faster than a bool one
    zeros = _per_channel(near_zero, x).sum(dim=1)  # per channel; counts below 2**24 are exact
    sparsity = zeros.sum(dim=1) / flat.shape[1]
    dead = (zeros == positions.shape[1]).float().mean(dim=1)
    spatial_std = variance.sqrt_().mean(dim=1)
    # one read-back for the float statistics, in STAT_KEYS order less the count (an int): one each costs more
    floats = torch.stack([sparsity, mean, std, low, high, spatial_std, dead], dim=1).tolist()
    return [dict(zip(STAT_KEYS, (*row[:5], count, *row[5:]), strict=True))
            for row, count in zip(floats, nonfinite.tolist())]


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C*H*W) without a copy: statistics ignore element order, so a channels_last tensor is read
    in its own memory order."""
    if _channels_last(x):
        x = x.permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], -1)


def _per_channel(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rows laid out as `_rows(x)` lays them, viewed as (N, H*W, C): no copy in either memory order."""
    n, channels = x.shape[0], x.shape[1]
    if _channels_last(x):
        return rows.view(n, -1, channels)
    return rows.view(n, channels, -1).transpose(1, 2)


def _masked_moments(flat: torch.Tensor, finite: torch.Tensor):
    zero = torch.zeros_like(flat)
    n = finite.sum(dim=1).clamp(min=1)
    mean = torch.where(finite, flat, zero).sum(dim=1) / n
    var = (torch.where(finite, flat - mean[:, None], zero) ** 2).sum(dim=1) / n
    big = torch.finfo(flat.dtype).max
    low = torch.where(finite, flat, torch.full_like(flat, big)).amin(dim=1)
    high = torch.where(finite, flat, torch.full_like(flat, -big)).amax(dim=1)
    return mean, var.sqrt(), low, high, (~finite).sum(dim=1)


def _masked_channel_variance(positions: torch.Tensor) -> torch.Tensor:
    """(N, H*W, C) -> (N, C) variance over the finite positions of each channel."""
    finite = torch.isfinite(positions)
    values = torch.where(finite, positions, torch.zeros_like(positions))
    n = finite.sum(dim=1, keepdim=True).clamp(min=1)
    mean = values.sum(dim=1, keepdim=True) / n
    return (torch.where(finite, positions - mean, torch.zeros_like(positions)) ** 2).sum(dim=1) / n.squeeze(1)
