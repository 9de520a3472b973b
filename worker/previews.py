"""What the HTML report shows of a scored pair, made where Pillow is (the gate stays numpy only):
small previews of both images, decoded as the distance saw them (worker.images.load_image: EXR
tone-mapped at the run's exposure, 16-bit scaled, alpha dropped), and the heatmap shrunk to half their
size. Made only for runs that ask for maps; under 10 kB each, so a report of a thousand 4K pairs stays small."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from gate.vocabulary import THUMBNAIL_PX
from worker.heatmap import heatmap_png
from worker.images import ImageError, load_image
from worker.runtime import Measurement

WEBP_QUALITY = 50  # previews to tell frames apart and spot a regression; the full image is a click away
HEATMAP_PX = THUMBNAIL_PX // 2  # shown at the previews' size: the LPIPS map is coarse (a quarter of the frame's)


def previews(m: Measurement, *, exposure: float, max_pixels: int) -> dict[str, bytes | None]:
    """ref_thumb, cand_thumb and heatmap_png of a measured pair; None where there is nothing to show."""
    ref, _ = thumbnail(Path(m.ref), exposure=exposure, max_pixels=max_pixels)
    cand, frame = thumbnail(Path(m.cand), exposure=exposure, max_pixels=max_pixels)
    heatmap = None
    if m.map is not None and m.finite:
        heatmap = heatmap_png(m.map, longest=HEATMAP_PX, frame=frame)
    return {"ref_thumb": ref, "cand_thumb": cand, "heatmap_png": heatmap}


def thumbnail(path: Path, *, exposure: float, max_pixels: int) -> tuple[bytes | None, tuple[int, int] | None]:
    """(WebP bytes at most THUMBNAIL_PX on a side, the image's own (width, height)); (None, None) for a
    file that no longer decodes (it was measured: only a change since then gets here)."""
    try:
        pixels = load_image(path, max_pixels=max_pixels, min_size=1, exposure=exposure, keep_nonfinite=True)
    except ImageError:
        return None, None
    rgb = ((pixels.nan_to_num(0.0) + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    picture = Image.fromarray(rgb.numpy())
    size = picture.size
    picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return encode_preview(picture), size


def encode_preview(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="WEBP", quality=WEBP_QUALITY, method=4)
    return out.getvalue()
