"""The only place where bytes become tensors: decode, validate and normalise images for LPIPS.

Every bad input ends as an `ImageError` that names the file and the reason, in words a producer can act
on and as a code a program can test; nothing here touches Pillow's process-wide state (MAX_IMAGE_PIXELS,
LOAD_TRUNCATED_IMAGES, warning filters), because workers decode in several threads at once. The torch-free
part (decoding to a numpy array, hashing) lives in `worker.pixels`, which the decode processes run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gate.vocabulary import RESIZE_MODES, Resize
from worker.pixels import (
    EXR_MAGIC,
    MIN_SIZE,
    SAFE_MIN_SIZE,
    SUPPORTED,
    ImageError,
    Reason,
    StrPath,
    check_file_name,
    content_hash,
    decode_hashed,
    decode_rgb,
)

__all__ = ["EXR_MAGIC", "MIN_SIZE", "SAFE_MIN_SIZE", "RESIZE_MODES", "SUPPORTED", "ImageError", "Reason", "Resize",
           "SizeMismatchError", "check_resize", "content_hash", "load_hashed", "load_image", "match_sizes",
           "pixels_tensor", "resolve_under"]


class SizeMismatchError(ImageError):
    """Reference and candidate differ in size and no resize was asked for; names both files."""

    def __init__(self, ref: StrPath, cand: StrPath, ref_size: tuple[int, int], cand_size: tuple[int, int]) -> None:
        ValueError.__init__(self, os.fspath(ref), os.fspath(cand), tuple(ref_size), tuple(cand_size))

    @property
    def cand(self) -> Path:
        return Path(self.args[1])

    @property
    def reason(self) -> Reason:
        return "size_mismatch"

    @property
    def detail(self) -> str:
        return "sizes differ; pass --resize ref|cand to resize"

    @property
    def cause(self) -> None:
        return None

    def __str__(self) -> str:
        ref, cand, (rw, rh), (cw, ch) = self.args
        return f"{ref} ({rw}x{rh}) and {cand} ({cw}x{ch}): {self.detail}"


def load_image(path: StrPath, *, max_pixels: int, min_size: int = SAFE_MIN_SIZE, exposure: float = 0.0,
               keep_nonfinite: bool = False) -> torch.Tensor:
    """Decode one image to a float32 (3, H, W) RGB tensor in [-1, 1], or raise `ImageError`. Its memory is
    the decoded (H, W, 3) array, the channels_last layout the networks run in, so nothing is transposed.

    OpenEXR (by its magic bytes) is tone-mapped by `worker.hdr` (exposure in stops, clamp, sRGB curve);
    `exposure` applies to EXR only.

    Formats: PNG (8/16-bit), JPEG (CMYK too), WebP, TIFF (8/16-bit, float), BMP; the first frame only.
    Range comes from the decoded mode, never from pixel values: 8-bit / 255, 16-bit (I;16*, I) / 65535,
    float (F) is taken as [0, 1] and clamped (NaN/inf rejected, or with `keep_nonfinite` returned as NaN
    samples, for a candidate's pixel guard to count); then x * 2 - 1. Pillow keeps only the
    high byte of 16-bit colour PNG/TIFF, so those arrive with 8-bit precision.
    Gray is replicated to three channels; palettes are expanded; CMYK/YCbCr go through Pillow's convert.
    Alpha is DROPPED: the colour channels are used as stored (straight, un-premultiplied colour; a
    premultiplied source is un-premultiplied first), never composited over a background.
    EXIF orientation and ICC profiles are ignored: pixels are compared as stored.
    Width x height is checked against `max_pixels` from the header before any pixel is decoded.
    """
    pixels = decode_rgb(path, max_pixels=max_pixels, min_size=min_size, keep_nonfinite=keep_nonfinite)
    if pixels is None:
        return _load_hdr(path, exposure=exposure, max_pixels=max_pixels, min_size=min_size,
                         keep_nonfinite=keep_nonfinite)
    return pixels_tensor(pixels)


def load_hashed(path: StrPath, *, max_pixels: int, min_size: int = SAFE_MIN_SIZE, exposure: float = 0.0,
                keep_nonfinite: bool = False) -> tuple[torch.Tensor, str]:
    """`load_image` and the file's `content_hash`, from one read of a file of ordinary size."""
    pixels, digest = decode_hashed(path, max_pixels=max_pixels, min_size=min_size, keep_nonfinite=keep_nonfinite)
    if pixels is None:
        return _load_hdr(path, exposure=exposure, max_pixels=max_pixels, min_size=min_size,
                         keep_nonfinite=keep_nonfinite), digest
    return pixels_tensor(pixels), digest


def _load_hdr(path: StrPath, **options) -> torch.Tensor:
    from worker.hdr import load_hdr  # HDR needs the OpenEXR bindings

    return load_hdr(path, **options)


def pixels_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(3, H, W) over decoded (H, W, 3) pixels, no copy: the channels_last layout the networks run in."""
    return torch.from_numpy(pixels).permute(2, 0, 1)


def match_sizes(
    ref: StrPath, cand: StrPath, ref_image: torch.Tensor, cand_image: torch.Tensor, *, resize: Resize = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoded reference and candidate of one size: equal shapes pass as they are; otherwise `resize`
    names the side resized to the other, and without one `SizeMismatchError` names both files."""
    check_resize(resize)
    if ref_image.shape == cand_image.shape:
        return ref_image, cand_image
    if resize == "ref":
        return _resize(ref_image, cand_image.shape[-2:]), cand_image
    if resize == "cand":
        return ref_image, _resize(cand_image, ref_image.shape[-2:])
    raise SizeMismatchError(ref, cand, _width_height(ref_image), _width_height(cand_image))


def check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")


def resolve_under(root: StrPath, relative: StrPath) -> Path:
    """Resolve an existing task path inside the image root, following symlinks, so nothing outside is read.

    The result is absolute, exists, and holds no symlink left to follow. Resolution is strict on
    purpose: Python 3.11's lenient resolve stops following links after a symlink loop, so
    "loop/../link_out/x" would come back looking inside the root while pointing out of it.
    """
    text = os.fspath(relative)
    if not text:
        raise ImageError(text, "bad_name", "empty path")
    check_file_name(text)
    if Path(text).is_absolute():
        raise ImageError(text, "absolute", "absolute path; task paths are relative to the image root")
    base = Path(root).resolve()
    try:
        resolved = (base / text).resolve(strict=True)
    except RuntimeError:  # pathlib's report of a symlink loop
        raise ImageError(text, "symlink_loop", "symlink loop") from None
    except (FileNotFoundError, NotADirectoryError):
        lenient = Path(os.path.realpath(base / text))  # never raises; only used to word the refusal
        _refuse_escape(text, lenient, base)  # so the answer says nothing about which outside files exist
        raise ImageError(text, "missing", "file not found") from None
    except OSError as exc:
        raise ImageError(text, "unreadable", "cannot resolve path", exc.strerror) from None
    _refuse_escape(text, resolved, base)
    return resolved


def _refuse_escape(text: str, resolved: Path, base: Path) -> None:
    if not resolved.is_relative_to(base):
        raise ImageError(text, "escapes_root", "path escapes the image root")


def _resize(image: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear with antialias (a convex filter), clamped against rounding past +-1."""
    resized = F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return resized[0].clamp_(-1, 1)


def _width_height(image: torch.Tensor) -> tuple[int, int]:
    return image.shape[-1], image.shape[-2]
