"""Distance maps as pictures on one fixed scale (gate.vocabulary.HEATMAP_SCALE, the report's colour
bar): a near-identical pair stays dark and a broken one shows hot, whatever the pair's own maximum;
values above the scale saturate. Written as palette PNG bytes in HEATMAP_LEVELS steps of the ramp (the
report's colour bar shows the same steps): a sampling-noise map, texture at every pixel, compresses to
a quarter of its 256-step size."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from gate.report.model import FRAME_KEY
from gate.vocabulary import HEATMAP_LEVELS, HEATMAP_RAMP, HEATMAP_SCALE

_RAMP = np.array(HEATMAP_RAMP, dtype=np.float64)


def colourise(values: np.ndarray, vmax: float = HEATMAP_SCALE) -> np.ndarray:
    """(H, W) values in [0, vmax] -> (H, W, 3) uint8 colours."""
    t = np.clip(values / vmax if vmax > 0 else np.zeros_like(values), 0, 1) * (len(_RAMP) - 1)
    low = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
    frac = (t - low)[..., None]
    return np.round(_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def heatmap_png(distance_map: torch.Tensor, *, longest: int | None = None, vmax: float = HEATMAP_SCALE,
                frame: tuple[int, int] | None = None) -> bytes:
    """The map, shrunk by area averaging to `longest` px on its longest side when given; `frame`, the
    candidate's own (width, height), is written with it so boxes in its pixels land on the shrunk map.
    Non-finite values show as saturated."""
    values = np.nan_to_num(distance_map.detach().float().cpu().numpy(), nan=vmax, posinf=vmax, neginf=0.0)
    picture = Image.fromarray(values.astype(np.float32), mode="F")
    if longest is not None:
        picture.thumbnail((longest, longest), Image.Resampling.BOX)
    steps = np.round(np.clip(np.asarray(picture) / vmax, 0, 1) * (HEATMAP_LEVELS - 1)).astype(np.uint8)
    indexed = Image.fromarray(steps, mode="L")
    indexed.putpalette(colourise(np.linspace(0, vmax, HEATMAP_LEVELS), vmax).tobytes())
    info = PngImagePlugin.PngInfo()
    if frame is not None:
        info.add_text(FRAME_KEY.decode("ascii"), f"{frame[0]}x{frame[1]}")
    out = io.BytesIO()
    indexed.save(out, format="PNG", pnginfo=info, optimize=True)
    return out.getvalue()
