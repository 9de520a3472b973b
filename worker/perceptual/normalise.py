"""Per-layer feature normalisations, selectable by name. `l2` is LPIPS; the others are not."""

from __future__ import annotations

import torch

EPS = 1e-10


def l2(x: torch.Tensor) -> torch.Tensor:
    """Unit length over channels at every position (LPIPS)."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + EPS)  # no x**2 temporary


def l2_(x: torch.Tensor) -> torch.Tensor:
    """`l2` in x's own memory: a fresh layer-sized tensor costs page faults that take longer than the divide."""
    return x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).add_(EPS))


def instance(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per channel over space."""
    mean, std = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (std + 1e-5)


def layer(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std over the whole layer of each image."""
    mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (std + 1e-5)


def unit_variance(x: torch.Tensor) -> torch.Tensor:
    """Unit std over the whole layer, keeping the sign and zero of ReLU features."""
    return x / (x.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-5)


def none(x: torch.Tensor) -> torch.Tensor:
    return x


# Each may overwrite its argument: LPIPS.features hands over activations it no longer needs.
NORMALISERS = {"l2": l2_, "instance": instance, "layer": layer, "unit-variance": unit_variance, "none": none}
