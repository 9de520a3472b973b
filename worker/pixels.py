"""Bytes to pixels without torch: open, validate, decode and normalise an image file to a float32 (H, W, 3)
array in [-1, 1], and hash it. `worker.images` builds tensors on it in-process; the decode processes
(`worker.decoding`) run it without importing torch, so both paths give the same pixels and the same errors.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from PIL import (
    BmpImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

StrPath = str | os.PathLike[str]

# Smallest H (and W) for which every tapped layer of the torchvision trunk still has spatial size >= 1
# (tests/unit/worker/test_images.py runs the architectures at the boundary):
#   alex    features[:12]: conv 11/4 pad 2 -> maxpool 3/2 -> conv 5 pad 2 -> maxpool 3/2 needs 31.
#   vgg     features[:30]: four 2x2 maxpools before relu5_3 need 16.
#   squeeze features[:13]: conv 3/2 then three ceil-mode maxpools 3/2 need 17.
MIN_SIZE: dict[str, int] = {"alex": 31, "vgg": 16, "squeeze": 17}
SAFE_MIN_SIZE = max(MIN_SIZE.values())  # the default: valid whichever net runs

WHOLE_FILE_BYTES = 64 * 2**20  # files up to this size are read once for both the decoder and the hash
SUPPORTED = "PNG, JPEG, WebP, TIFF, BMP or OpenEXR"
EXR_MAGIC = b"v/1\x01"
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_GRAY_8BIT_MODES = frozenset({"1", "L", "LA", "La"})


Reason = Literal[
    "bad_name",  # empty, a NUL byte, characters no file name can hold
    "absolute",  # a task path must be relative to the image root
    "escapes_root",
    "symlink_loop",
    "missing",
    "not_a_file",  # a directory, FIFO or device
    "unreadable",  # the OS refused (cause: its error)
    "empty",
    "not_an_image",  # no format we read
    "unsupported",  # a format we read, in a variant we do not
    "bomb",  # more pixels than allowed, by our limit or Pillow's
    "too_small",  # smaller than the network needs
    "truncated",  # truncated or corrupt (cause: the decoder's error)
    "kills_decoder",  # the decode process died on it, every try (cause: how it died)
    "nonfinite",  # NaN or infinite samples
    "bad_exposure",
    "size_mismatch",
]


class ImageError(ValueError):
    """A bad input image. `reason` is a code for programs; `str()` is "<path>: <detail>" in our words,
    then, in parentheses, what the decoder or the OS said (`cause`: their wording, which changes with
    their versions). Args stay JSON-friendly so Celery can ship it."""

    def __init__(self, path: StrPath, reason: Reason, detail: str, cause: str | None = None) -> None:
        super().__init__(os.fspath(path), reason, detail, cause)

    @property
    def path(self) -> Path:
        return Path(self.args[0])

    @property
    def reason(self) -> Reason:
        return self.args[1]

    @property
    def detail(self) -> str:
        return self.args[2]

    @property
    def cause(self) -> str | None:
        return self.args[3]

    def __str__(self) -> str:
        return f"{self.args[0]}: {self.detail}" + (f" ({self.cause})" if self.cause else "")



def decode_rgb(path: StrPath, *, max_pixels: int, min_size: int = SAFE_MIN_SIZE,
               keep_nonfinite: bool = False) -> np.ndarray | None:
    """The (H, W, 3) float32 pixels in [-1, 1] that `worker.images.load_image` documents, or None for an
    OpenEXR file (its tone map runs in torch: `worker.hdr`)."""
    _check_limits(max_pixels, min_size)
    with _open_regular_file(path) as fp:
        return _decode_from(path, fp, max_pixels, min_size, keep_nonfinite)


def decode_hashed(path: StrPath, *, max_pixels: int, min_size: int = SAFE_MIN_SIZE,
                  keep_nonfinite: bool = False) -> tuple[np.ndarray | None, str]:
    """`decode_rgb` and `content_hash` from one opening of the file. A file of up to WHOLE_FILE_BYTES is
    read in one call and both work from its bytes: at small sizes the decoder's many small reads of the
    file cost more than decoding."""
    _check_limits(max_pixels, min_size)
    with _open_regular_file(path) as fp:
        if os.fstat(fp.fileno()).st_size <= WHOLE_FILE_BYTES:
            data = fp.read()
            pixels = _decode_from(path, io.BytesIO(data), max_pixels, min_size, keep_nonfinite)
            return pixels, hashlib.sha256(data).hexdigest()
        pixels = _decode_from(path, fp, max_pixels, min_size, keep_nonfinite)
        fp.seek(0)
        return pixels, hashlib.file_digest(fp, "sha256").hexdigest()


def frame_size(path: StrPath) -> tuple[int, int] | None:
    """(width, height) from the header, or None where none can be read (OpenEXR, a bad file)."""
    try:
        with _open_regular_file(path) as fp:
            return _read_header(path, fp, max_pixels=sys.maxsize).size
    except (ImageError, OSError):
        return None


def content_hash(path: StrPath) -> str:
    """sha256 hex digest of the file's bytes: the identity used for dedup and caching."""
    with _open_regular_file(path) as fp:
        return hashlib.file_digest(fp, "sha256").hexdigest()


def _decode_from(path: StrPath, fp: BinaryIO, max_pixels: int, min_size: int,
                 keep_nonfinite: bool) -> np.ndarray | None:
    if fp.read(4) == EXR_MAGIC:
        return None
    fp.seek(0)
    image = _read_header(path, fp, max_pixels)
    _check_size(path, image.size, max_pixels, min_size)
    _decode(path, image)
    pixels = _unit_range(path, image, keep_nonfinite)
    pixels *= 2  # in numpy, single-threaded: torch would fan each small op out over every core
    pixels -= 1  # from every decode thread at once, and oversubscribe the CPU
    return pixels


def _check_limits(max_pixels: int, min_size: int) -> None:
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if min_size < 1:
        raise ValueError(f"min_size must be positive, got {min_size}")


def check_file_name(text: str) -> None:
    """Refuse what the OS would reject with a bare ValueError: NUL bytes and unencodable characters."""
    if "\0" in text:
        raise ImageError(text, "bad_name", "path contains a NUL byte")
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        raise ImageError(text, "bad_name", "path has characters no file name can hold") from None


def _open_regular_file(path: StrPath) -> io.BufferedReader:
    """Open for reading after a stat, so FIFOs and devices are refused instead of blocking or streaming."""
    check_file_name(os.fspath(path))
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(path, "not_a_file", "not a regular file")
        if info.st_size == 0:
            raise ImageError(path, "empty", "empty file")
        return open(path, "rb")
    except FileNotFoundError:
        raise ImageError(path, "missing", "file not found") from None
    except OSError as exc:
        raise ImageError(path, "unreadable", "cannot read file", exc.strerror) from None


def _read_header(path: StrPath, fp: BinaryIO, max_pixels: int) -> Image.Image:
    """Parse the header with the one plugin the magic bytes select, bypassing Image.open's global checks."""
    prefix = fp.read(30)
    plugin = _plugin_for(prefix)
    if plugin is None:
        raise ImageError(path, "not_an_image", f"not an image file (expected {SUPPORTED})")
    if plugin is WebPImagePlugin.WebPImageFile and (size := _webp_size(prefix)):
        _check_pixels(path, size, max_pixels)  # libwebp allocates the canvas while the header is parsed
    fp.seek(0)
    with _pillow_errors(path):
        return plugin(fp, os.fspath(path))


def _plugin_for(prefix: bytes) -> type[ImageFile.ImageFile] | None:
    if prefix.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile
    if prefix.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return WebPImagePlugin.WebPImageFile
    if prefix[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return TiffImagePlugin.TiffImageFile
    if prefix.startswith(b"BM"):
        return BmpImagePlugin.BmpImageFile
    return None


def _webp_size(prefix: bytes) -> tuple[int, int] | None:
    """Canvas size from the first chunk header (VP8X, VP8L or VP8), as libwebp will read it."""
    chunk = prefix[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(prefix[24:27], "little"), 1 + int.from_bytes(prefix[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(prefix[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        return int.from_bytes(prefix[26:28], "little") & 0x3FFF, int.from_bytes(prefix[28:30], "little") & 0x3FFF
    return None


def _check_pixels(path: StrPath, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            path,
            "bomb",
            f"image is {width}x{height} ({width * height} pixels), more than max_pixels={max_pixels}; "
            "refusing to decode a possible decompression bomb",
        )


def _check_size(path: StrPath, size: tuple[int, int], max_pixels: int, min_size: int) -> None:
    _check_pixels(path, size, max_pixels)
    width, height = size
    if min(width, height) < min_size:
        raise ImageError(path, "too_small",
                         f"image is {width}x{height}; the network needs at least {min_size}x{min_size}")


def _decode(path: StrPath, image: Image.Image) -> None:
    """Force the full decode now, so a truncated or corrupt file fails here and not half-way."""
    with _pillow_errors(path):
        image.load()


@contextmanager
def _pillow_errors(path: StrPath) -> Iterator[None]:
    """Map whatever Pillow raises on hostile bytes (OSError, SyntaxError, struct.error, ...) to ImageError."""
    try:
        yield
    except (ImageError, MemoryError):  # out of memory is the machine's problem, not the file's
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, "bomb", "refused as a decompression bomb by Pillow", str(exc)) from None
    except Exception as exc:
        raise ImageError(path, "truncated", "truncated or corrupt image", str(exc) or type(exc).__name__) from None


def _unit_range(path: StrPath, image: Image.Image, keep_nonfinite: bool) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1], scaled by what the mode says the sample type is."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _three_channels(_scaled(image, 65535))
    if mode == "I":
        return _three_channels(np.clip(_scaled(image, 65535), 0, 1))
    if mode == "F":
        return _three_channels(_clamped_float(path, image, keep_nonfinite))
    if mode in _GRAY_8BIT_MODES:
        straight = image.convert("LA") if mode == "La" else image  # un-premultiply; Pillow has no La -> L
        return _three_channels(_scaled(straight.convert("L"), 255))
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # convert would copy an RGB image
    return _scaled(rgb, 255)  # drops alpha; RGBa is un-premultiplied by Pillow


def _scaled(image: Image.Image, full_scale: int) -> np.ndarray:
    samples = np.asarray(image).astype(np.float32)
    samples /= full_scale  # in place: a 64-megapixel image is 768 MB per float copy
    return samples


def _clamped_float(path: StrPath, image: Image.Image, keep_nonfinite: bool) -> np.ndarray:
    samples = _scaled(image, 1)
    finite = np.isfinite(samples)
    if not finite.all():
        if not keep_nonfinite:
            raise ImageError(path, "nonfinite", "float image contains NaN or infinite pixel values")
        samples[~finite] = np.nan  # clip keeps NaN: +-inf would become 1 and 0 and pass unseen
    return np.clip(samples, 0, 1, out=samples)


def _three_channels(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)
