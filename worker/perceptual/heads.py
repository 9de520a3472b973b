"""The LPIPS linear heads: one non-negative 1x1 conv per tapped layer, keys `lin{i}.model.1.weight`."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file
from torch import nn

SHIPPED = Path(__file__).parent / "heads"  # v0.0 and v0.1 heads from lpips==0.1.4 (BSD-2-Clause)


class NetLinLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))

    @property
    def conv(self) -> nn.Conv2d:
        """The 1x1 conv, `model.1` as in the lpips package's keys."""
        return cast(nn.Conv2d, self.model[1])  # a Sequential's items are typed Module; this one is the Conv2d above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Heads(nn.Module):
    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        for i, c in enumerate(channels):
            self.add_module(f"lin{i}", NetLinLayer(c))

    def __getitem__(self, i: int) -> NetLinLayer:
        return getattr(self, f"lin{i}")

    def load_checked(self, state_dict: dict[str, torch.Tensor]) -> Heads:
        """Strict load; negative weights would make distances negative, so they are refused."""
        self.load_state_dict(state_dict, strict=True)
        negative = [k for k, v in state_dict.items() if (v < 0).any()]
        if negative:
            raise ValueError(f"heads have negative weights in {negative}: broken or foreign weights")
        return self


def shipped_heads(net: str, version: str) -> dict[str, torch.Tensor]:
    path = SHIPPED / f"{net}-v{version}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no shipped heads for net {net!r} version {version!r}")
    return load_file(path)
