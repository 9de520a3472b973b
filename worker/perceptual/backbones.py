"""LPIPS backbones: a torchvision trunk plus the names of the ReLU outputs LPIPS taps."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models


@dataclass(frozen=True)
class Preset:
    build: Callable[[], nn.Sequential]  # the net's torchvision `features`, randomly initialised
    taps: tuple[str, ...]  # module names whose outputs are the LPIPS features
    channels: tuple[int, ...]


PRESETS: dict[str, Preset] = {
    "alex": Preset(
        lambda: models.alexnet(weights=None).features,
        tuple(f"features.{i}" for i in (1, 4, 7, 9, 11)),
        (64, 192, 384, 256, 256),
    ),
    "vgg": Preset(
        lambda: models.vgg16(weights=None).features,
        tuple(f"features.{i}" for i in (3, 8, 15, 22, 29)),
        (64, 128, 256, 512, 512),
    ),
    "squeeze": Preset(
        lambda: models.squeezenet1_1(weights=None).features,
        tuple(f"features.{i}" for i in (1, 4, 7, 9, 10, 11, 12)),
        (64, 128, 256, 384, 384, 512, 512),
    ),
}


class Trunk(nn.Module):
    """Keeps torchvision's `features.N` names, so taps and weight keys read as in the full model."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def trunk(net: str, state_dict: dict[str, torch.Tensor] | None) -> Trunk:
    """The `features` trunk of a preset, cut after its last tap, frozen, in eval mode.

    `state_dict` holds `features.*` keys and is loaded strictly; None leaves random weights,
    which only tests may ask for."""
    if net not in PRESETS:
        raise ValueError(f"unknown net {net!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[net]
    last = int(preset.taps[-1].split(".")[1])
    # with weights to load, no random init of the layers they replace or of the classifier cut off
    with nullcontext() if state_dict is None else torch.device("meta"):
        model = Trunk(preset.build()[: last + 1])
    if state_dict is not None:
        model.to_empty(device="cpu").load_state_dict(state_dict, strict=True)
    return model.eval().requires_grad_(False)
