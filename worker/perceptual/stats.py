"""Feature-quality statistics of one layer's raw activations, per image."""

from __future__ import annotations

import torch

SPARSE = 1e-6


def layer_stats(x: torch.Tensor) -> list[dict[str, float]]:
    """For each image of a (N,C,H,W) batch: sparsity (fraction |x| < 1e-6), mean, std, min, max,
    and the count of NaN/Inf values; moments are over finite values only."""
    flat = x.detach().float().flatten(1)
    finite = torch.isfinite(flat)
    clean = torch.where(finite, flat, torch.zeros_like(flat))
    n = finite.sum(dim=1).clamp(min=1)
    mean = clean.sum(dim=1) / n
    var = (torch.where(finite, flat - mean[:, None], torch.zeros_like(flat)) ** 2).sum(dim=1) / n
    big = torch.finfo(flat.dtype).max
    rows = zip(
        (flat.abs() < SPARSE).float().mean(dim=1).tolist(),
        mean.tolist(),
        var.sqrt().tolist(),
        torch.where(finite, flat, torch.full_like(flat, big)).amin(dim=1).tolist(),
        torch.where(finite, flat, torch.full_like(flat, -big)).amax(dim=1).tolist(),
        (~finite).sum(dim=1).tolist(),
    )
    keys = ("sparsity", "mean", "std", "min", "max", "nonfinite")
    return [dict(zip(keys, row)) for row in rows]
