"""The metric for science commands: provisioned trunk plus shipped (0.0/0.1) or trained heads."""

from __future__ import annotations

from pathlib import Path

import torch

from worker import weights
from worker.perceptual import LPIPS
from worker.perceptual.heads import shipped_heads
from worker.science.trained import (
    SHIPPED_VERSIONS,
    TrainedHeadsError,
    trained_heads,
    trained_metadata,
)


def trunk(settings, net: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Provisioned, sha256-checked trunk tensors and their version id ("random" only when allowed)."""
    if settings.allow_random_weights:
        return None, "random"
    state, provisioned = weights.load(settings.weights_dir, net)
    return state, provisioned.version


def resolve_heads(weights_dir: Path, net: str, version: str, trunk_version: str) -> tuple[dict, str]:
    """Heads for a shipped version or a trained name, and the id that marks results made with them."""
    if version in SHIPPED_VERSIONS:
        return shipped_heads(net, version), ""
    metadata = trained_metadata(weights_dir, net, version)
    trained_on = metadata["info"].get("weights_version")
    if trained_on != trunk_version:
        raise TrainedHeadsError(
            f"heads {version!r} for {net!r} were trained on trunk weights {trained_on!r}, "
            f"but the provisioned trunk is {trunk_version!r}")
    return trained_heads(weights_dir, net, version), f"+heads:{metadata['sha256'][:12]}"


def build_metric(settings, *, net: str, version: str = "0.1", lin: bool = True, **options) -> tuple[LPIPS, str]:
    """The metric and the weights version to report: the trunk id, plus `+heads:<sha256[:12]>` for trained
    heads. `options` (precision, normalise, reduction) go to LPIPS. Any version other than 0.0 scales
    inputs as v0.1 does, which is how trained heads were learned."""
    state, trunk_version = trunk(settings, net)
    heads, suffix = resolve_heads(settings.weights_dir, net, version, trunk_version) if lin else (None, "")
    model = LPIPS(net, version, trunk_state=state, heads_state=heads, lin=lin,
                  allow_random=settings.allow_random_weights, **options)
    return model, trunk_version + suffix
