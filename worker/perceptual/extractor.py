"""Multi-layer feature extraction with forward hooks, for any model and any list of module names.

Hooks are registered, run and removed inside one call and write to a local dict, so no state
outlives the call and concurrent calls on one model never see each other's features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _Done(Exception):
    """Raised by the last hook: the rest of the network is not needed."""


def extract(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
    """Outputs of the named modules for input `x`, in the order of `layers`."""
    if not layers:
        raise ValueError("extract needs at least one layer name")
    captured: dict[str, torch.Tensor] = {}
    wanted = set(layers)

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output
            if len(captured) == len(wanted):
                raise _Done

        return hook

    handles = [model.get_submodule(name).register_forward_hook(hook_for(name)) for name in wanted]
    try:
        model(x)
    except _Done:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = wanted - captured.keys()
    if missing:
        raise RuntimeError(f"layers never ran in the forward pass: {sorted(missing)}")
    return [captured[name] for name in layers]
