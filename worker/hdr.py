"""HDR input: OpenEXR scene-linear RGB, tone-mapped to the [-1, 1] display-referred range LPIPS expects.

The tone map is stated, not guessed: multiply by 2**exposure (stops), clamp to [0, 1], encode with
the sRGB transfer curve (IEC 61966-2-1), then x * 2 - 1. It runs in float64, so an EXR holding
linear values whose sRGB encodings are k/255 gives the same tensor as the 8-bit PNG of those values.
A distance on HDR input depends on the exposure: store `gate.tonemap.tonemap_policy(exposure)` with each result."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from worker.images import SAFE_MIN_SIZE, ImageError


def srgb_encode(linear: torch.Tensor) -> torch.Tensor:
    """sRGB transfer curve on [0, 1] values."""
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def srgb_decode(encoded: torch.Tensor) -> torch.Tensor:
    """Inverse of `srgb_encode` on [0, 1] values."""
    return torch.where(encoded <= 0.04045, encoded / 12.92, ((encoded.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def tonemap(linear: torch.Tensor, exposure: float = 0.0) -> torch.Tensor:
    """Scene-linear RGB (any shape, finite) -> float32 in [-1, 1], computed in float64."""
    if not math.isfinite(exposure):
        raise ValueError(f"exposure must be a finite number of stops, got {exposure}")
    if not torch.isfinite(linear).all():
        raise ValueError("linear image contains NaN or infinite values")
    exposed = (linear.double() * 2.0**exposure).clamp(0.0, 1.0)
    return (srgb_encode(exposed) * 2 - 1).float()


def load_hdr(path: str | os.PathLike[str], *, exposure: float = 0.0, max_pixels: int = 64_000_000,
             min_size: int = SAFE_MIN_SIZE, keep_nonfinite: bool = False) -> torch.Tensor:
    """Decode an OpenEXR file's R, G, B (or Y) channels of its first part and tone-map them to a float32
    (3, H, W) tensor in [-1, 1]. Bad files raise `ImageError` naming the file and the reason; so do NaN
    or infinite samples, unless `keep_nonfinite` returns them as NaN (a candidate's pixel guard counts them)."""
    try:
        import OpenEXR  # deferred: only HDR input needs the OpenEXR bindings
    except ImportError:
        hint = "OpenEXR input needs the exr extra: pip install 'lpips-gate[exr]'"
        raise ImageError(path, "unsupported", hint) from None

    header = _open(OpenEXR, path, header_only=True).header()
    _check_size(path, header["dataWindow"], max_pixels, min_size)
    parts = _open(OpenEXR, path, separate_channels=True).parts
    if not parts:  # the bindings report a failed pixel read on stderr and return no parts
        raise ImageError(path, "truncated", "truncated or corrupt EXR (no readable pixel data)")
    channels = parts[0].channels
    names = ("R", "G", "B") if {"R", "G", "B"} <= channels.keys() else ("Y",) * 3 if "Y" in channels else None
    if names is None:
        found = ", ".join(sorted(channels))
        raise ImageError(path, "unsupported", f"EXR has no R, G, B or Y channels (found {found})")
    planes = [channels[name] for name in names]
    for name, plane in zip(names, planes):
        if plane.pixels.dtype not in (np.float16, np.float32):
            raise ImageError(path, "unsupported",
                             f"EXR channel {name} holds {plane.pixels.dtype} samples; expected half or float")
        if (plane.xSampling, plane.ySampling) != (1, 1):
            raise ImageError(path, "unsupported",
                             f"EXR channel {name} is subsampled; only full-resolution channels are supported")
    linear = torch.from_numpy(np.stack([p.pixels.astype(np.float64) for p in planes]))
    finite = torch.isfinite(linear)
    nonfinite = not finite.all()
    if nonfinite:
        if not keep_nonfinite:
            raise ImageError(path, "nonfinite", "EXR contains NaN or infinite pixel values")
        linear[~finite] = 0.0
    try:
        mapped = tonemap(linear, exposure)
    except ValueError as exc:
        raise ImageError(path, "bad_exposure", str(exc)) from None
    if nonfinite:
        mapped[~finite] = torch.nan
    return mapped


def _open(module, path, **options):
    if not os.path.isfile(path):
        if not os.path.exists(path):
            raise ImageError(path, "missing", "file not found")
        raise ImageError(path, "not_a_file", "not a regular file")
    if not module.isOpenExrFile(os.fspath(path)):
        raise ImageError(path, "not_an_image", "not an OpenEXR file")
    try:
        return module.File(os.fspath(path), **options)
    except RuntimeError as exc:
        raise ImageError(path, "truncated", "truncated or corrupt EXR", str(exc)) from None


def _check_size(path, data_window, max_pixels: int, min_size: int) -> None:
    (x0, y0), (x1, y1) = (tuple(int(v) for v in corner) for corner in data_window)
    width, height = x1 - x0 + 1, y1 - y0 + 1
    if width * height > max_pixels:
        raise ImageError(path, "bomb", f"image is {width}x{height} ({width * height} pixels), more than "
                                       f"max_pixels={max_pixels}; refusing to decode a possible decompression bomb")
    if min(width, height) < min_size:
        raise ImageError(path, "too_small",
                         f"image is {width}x{height}; the network needs at least {min_size}x{min_size}")
