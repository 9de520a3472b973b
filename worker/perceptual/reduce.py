"""Spatial reductions of a per-position distance map (N,1,H,W) -> (N,). `mean` is LPIPS."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean(d: torch.Tensor) -> torch.Tensor:
    return d.mean(dim=(1, 2, 3))


def max_(d: torch.Tensor) -> torch.Tensor:
    """The worst position: catches a small local artefact that the mean dilutes."""
    return d.amax(dim=(1, 2, 3))


def mixed(d: torch.Tensor) -> torch.Tensor:
    """Half mean, half max."""
    return 0.5 * (mean(d) + max_(d))


def pyramid(d: torch.Tensor) -> torch.Tensor:
    """Mean over scales 1, 2, 4 of the worst average-pooled window: local worst case at several sizes."""
    levels = [d] + [F.avg_pool2d(d, s, ceil_mode=True) for s in (2, 4) if min(d.shape[-2:]) >= s]
    return torch.stack([max_(level) for level in levels]).mean(dim=0)


REDUCTIONS = {"mean": mean, "max": max_, "mixed": mixed, "pyramid": pyramid}
