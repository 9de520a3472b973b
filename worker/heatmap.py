"""Distance maps as pictures: a perceptual colour ramp, written as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

# Anchors of the 'inferno' ramp: dark for identical, bright yellow for most different.
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
                  [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def colourise(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) values in [0, vmax] -> (H, W, 3) uint8 colours."""
    t = np.clip(values / vmax if vmax > 0 else np.zeros_like(values), 0, 1) * (len(_RAMP) - 1)
    low = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
    frac = (t - low)[..., None]
    return np.round(_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def heatmap_png(distance_map: torch.Tensor, vmax: float | None = None) -> bytes:
    values = distance_map.detach().float().cpu().numpy()
    rgb = colourise(values, float(values.max()) if vmax is None else vmax)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()
