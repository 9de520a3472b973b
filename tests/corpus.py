"""A deterministic corpus of good and hostile image inputs, written to a folder; any test may reuse it.

`make_corpus(folder)` writes images under folder/root (the image root) and a file under folder/outside
that only a symlink escaping the root can reach. The pixel generators are public so tests can state
the exact values a loader must return.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64  # every good image is SIZE x SIZE unless its name says otherwise
BOMB_SIDE = 50_000  # what the hand-made PNG header claims
WEBP_BOMB_SIDE = 16_383  # the largest side a WebP frame may have


def rgb_pixels(seed: int, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """Seeded random uint8 RGB with one black and one white pixel, so min and max are known exactly."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[0, 0] = 0
    pixels[-1, -1] = 255
    return pixels


def gray_ramp() -> np.ndarray:
    """uint8 SIZE x SIZE, each row 0 .. 255 left to right."""
    return np.tile(np.arange(SIZE) * 255 // (SIZE - 1), (SIZE, 1)).astype(np.uint8)


def gray16_ramp() -> np.ndarray:
    """uint16 SIZE x SIZE, 0 .. 65535 in reading order."""
    return (np.arange(SIZE * SIZE) * 65535 // (SIZE * SIZE - 1)).reshape(SIZE, SIZE).astype(np.uint16)


def float_ramp() -> np.ndarray:
    """float32 SIZE x SIZE from -0.5 to 1.5 in reading order: a loader must clamp to [0, 1]."""
    return np.linspace(-0.5, 1.5, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)


def halves(width: int, height: int) -> np.ndarray:
    """uint8 RGB, black left half and white right half: resizing keeps the edges at -1 and 1."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, width // 2 :] = 255
    return pixels


PALETTE = [(255, 0, 0), (0, 0, 255)]  # index 0 is red (and transparent), index 1 blue


def palette_indices() -> np.ndarray:
    """A checkerboard of palette indices 0 and 1."""
    rows, cols = np.indices((SIZE, SIZE))
    return ((rows + cols) % 2).astype(np.uint8)


def truncated_error(path: str | os.PathLike[str]) -> re.Pattern[str]:
    """The error a truncated file gets: the file and our words, then the decoder's own in parentheses,
    which are its to change, so they are matched, not pinned."""
    return re.compile(rf"{re.escape(os.fspath(path))}: truncated or corrupt image \(.+\)")


def make_corpus(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write every case; returns name -> path (plus "root" and "outside", the two folders)."""
    root, outside = Path(folder) / "root", Path(folder) / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    files = {name: _write(root / filename, data) for name, (filename, data) in _cases().items()}
    files["secret"] = _write(outside / "secret.png", _png(Image.fromarray(rgb_pixels(9))))
    files.update(_links(root))
    (root / "sub").mkdir()
    files["nested"] = _write(root / "sub" / "nested.png", _png(Image.fromarray(rgb_pixels(10))))
    return {"root": root, "outside": outside, **files}


def _cases() -> dict[str, tuple[str, bytes]]:
    good_ref = _png(Image.fromarray(rgb_pixels(1)))
    rgba = np.dstack([rgb_pixels(4), gray_ramp()])
    palette = Image.fromarray(palette_indices(), "P")
    palette.putpalette([channel for colour in PALETTE for channel in colour])
    return {
        "good_ref": ("good_ref.png", good_ref),
        "good_cand": ("good_cand.png", _png(Image.fromarray(rgb_pixels(2)))),
        "truncated_png": ("truncated.png", good_ref[: len(good_ref) // 2]),
        "truncated_jpeg": ("truncated.jpg", _cut_jpeg()),
        "not_image": ("not_image.png", b"this is a text file, not a picture\n"),
        "empty": ("empty.png", b""),
        "bomb_png": ("bomb.png", bomb_png()),
        "bomb_webp": ("bomb.webp", bomb_webp()),
        "gray16_png": ("gray16.png", _png(Image.fromarray(gray16_ramp()))),
        "rgb16_png": ("rgb16.png", rgb16_png()),
        "gray16_tiff": ("gray16.tif", _encode(Image.fromarray(gray16_ramp()), "TIFF")),
        "rgb16_tiff": ("rgb16.tif", rgb16_tiff()),
        "float_tiff": ("float.tif", _encode(Image.fromarray(float_ramp()), "TIFF")),
        "nan_tiff": ("nan.tif", _encode(Image.fromarray(_with_nan(float_ramp())), "TIFF")),
        "premultiplied_gray_tiff": ("premultiplied.tif", premultiplied_gray_tiff()),
        "cmyk_jpeg": ("cmyk.jpg", _encode(_cmyk_halves(), "JPEG", quality=95)),
        "rgba_png": ("rgba.png", _png(Image.fromarray(rgba, "RGBA"))),
        "gray_png": ("gray.png", _png(Image.fromarray(gray_ramp()))),
        "palette_png": ("palette.png", _encode(palette, "PNG", transparency=0)),
        "webp": ("lossless.webp", _encode(Image.fromarray(rgb_pixels(5)), "WEBP", lossless=True)),
        "bmp": ("image.bmp", _encode(Image.fromarray(rgb_pixels(6)), "BMP")),
        "tiny_1x1": ("tiny_1x1.png", _png(Image.fromarray(rgb_pixels(7, 1, 1)))),
        "tiny_8x8": ("tiny_8x8.png", _png(Image.fromarray(rgb_pixels(8, 8, 8)))),
        "mismatch_ref": ("mismatch_ref.png", _png(Image.fromarray(halves(64, 48)))),
        "mismatch_cand": ("mismatch_cand.png", _png(Image.fromarray(halves(32, 32)))),
    }


def _links(root: Path) -> dict[str, Path]:
    """Relative symlinks: one escaping the root, one staying inside, and a loop."""
    links = {
        "escape_link": (root / "escape.png", Path("..") / "outside" / "secret.png"),
        "inside_link": (root / "alias.png", Path("good_ref.png")),
        "loop_link": (root / "loop_a.png", Path("loop_b.png")),
    }
    for link, target in links.values():
        link.symlink_to(target)
    (root / "loop_b.png").symlink_to("loop_a.png")
    return {name: link for name, (link, _) in links.items()}


def bomb_png() -> bytes:
    """A valid PNG header claiming BOMB_SIDE x BOMB_SIDE RGB, with a few bytes of data: under 100 bytes."""
    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 2, 0, 0, 0)
    return _png_bytes(header, zlib.compress(b"\0" * 64))


def bomb_webp() -> bytes:
    """A WebP VP8X header claiming a WEBP_BOMB_SIDE square canvas and no frame at all."""
    side = (WEBP_BOMB_SIDE - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + side + side
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def rgb16_png() -> bytes:
    """16-bit RGB PNG whose high bytes are rgb_pixels(3) and low bytes 0xAB (Pillow keeps the high byte)."""
    samples = (rgb_pixels(3).astype(np.uint16) * 256 + 0xAB).astype(">u2")
    rows = b"".join(b"\0" + row.tobytes() for row in samples)
    return _png_bytes(struct.pack(">IIBBBBB", SIZE, SIZE, 16, 2, 0, 0, 0), zlib.compress(rows))


def rgb16_tiff() -> bytes:
    """16-bit little-endian RGB TIFF with the same samples as rgb16_png."""
    samples = (rgb_pixels(3).astype(np.uint16) * 256 + 0xAB).astype("<u2")
    return _tiff(SIZE, SIZE, bits=(16, 16, 16), photometric=2, data=samples.tobytes())


def premultiplied_gray_tiff() -> bytes:
    """8-bit gray + associated (premultiplied) alpha: gray 64 under alpha 128 is straight gray 127."""
    samples = np.tile(np.array([64, 128], dtype=np.uint8), (SIZE, SIZE, 1))
    return _tiff(SIZE, SIZE, bits=(8, 8), photometric=1, data=samples.tobytes(), extra_samples=(1,))


def _png_bytes(ihdr: bytes, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _tiff(width: int, height: int, *, bits: tuple[int, ...], photometric: int, data: bytes,
          extra_samples: tuple[int, ...] = ()) -> bytes:
    """A single-strip, uncompressed, little-endian baseline TIFF (Pillow cannot write these modes)."""
    short, long_ = 3, 4
    tags = [(256, long_, [width]), (257, long_, [height]), (258, short, list(bits)), (259, short, [1]),
            (262, short, [photometric]), (273, long_, [0]), (277, short, [len(bits)]),
            (278, long_, [height]), (279, long_, [len(data)]), (284, short, [1])]
    if extra_samples:
        tags.append((338, short, list(extra_samples)))
    packed = {tag: struct.pack(f"<{len(v)}{'H' if kind == short else 'I'}", *v) for tag, kind, v in tags}
    ifd_end = 8 + 2 + 12 * len(tags) + 4
    overflow_size = sum(len(raw) for raw in packed.values() if len(raw) > 4)
    packed[273] = struct.pack("<I", ifd_end + overflow_size)
    entries, overflow = b"", b""
    for tag, kind, values in tags:
        raw = packed[tag]
        if len(raw) > 4:
            entries += struct.pack("<HHII", tag, kind, len(values), ifd_end + len(overflow))
            overflow += raw
        else:
            entries += struct.pack("<HHI", tag, kind, len(values)) + raw.ljust(4, b"\0")
    return b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + b"\0" * 4 + overflow + data


def _cmyk_halves() -> Image.Image:
    """Cyan (C=255) left half, white (no ink) right half."""
    ink = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    ink[:, : SIZE // 2, 0] = 255
    return Image.fromarray(ink, "CMYK")


def _cut_jpeg() -> bytes:
    whole = _encode(Image.fromarray(rgb_pixels(11)), "JPEG", quality=90)
    return whole[: len(whole) // 2]


def _with_nan(samples: np.ndarray) -> np.ndarray:
    samples = samples.copy()
    samples[5, 7] = np.nan
    return samples


def _png(image: Image.Image) -> bytes:
    return _encode(image, "PNG")


def _encode(image: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
