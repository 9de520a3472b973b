"""Hostile bytes and hostile paths: worker.images either returns a sane tensor or raises ImageError."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.corpus import bomb_png, bomb_webp, premultiplied_gray_tiff, rgb16_png, rgb_pixels
from worker.images import ImageError, Reason, load_image, resolve_under

MAX_PIXELS = 1 << 16  # a mutated header may claim anything: keep what may decode small
REASONS = get_args(Reason)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CORRUPT_TIFF_WARNINGS = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # expected noise
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAGICS = [b"", PNG_SIGNATURE, b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\0\0\0\0WEBPVP8L",
          b"RIFF\0\0\0\0WEBPVP8X", b"II*\0", b"MM\0*", b"II+\0", b"BM"]


def _encode(image: Image.Image, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def _seed_files() -> list[bytes]:
    """Small valid files covering every decoder and the modes load_image treats differently."""
    rgb = Image.fromarray(rgb_pixels(21, 16, 16))
    gray16 = Image.fromarray((np.arange(256, dtype=np.uint16) * 257).reshape(16, 16))
    floats = Image.fromarray(np.linspace(-1, 2, 256, dtype=np.float32).reshape(16, 16))
    return [
        _encode(rgb, "PNG"), _encode(rgb.convert("RGBA"), "PNG"), _encode(rgb.convert("P"), "PNG"),
        _encode(rgb.convert("L"), "PNG"), _encode(rgb.convert("1"), "PNG"), _encode(gray16, "PNG"), rgb16_png(),
        _encode(rgb, "JPEG"), _encode(rgb.convert("CMYK"), "JPEG"), _encode(rgb, "JPEG", progressive=True),
        _encode(rgb, "WEBP"), _encode(rgb, "WEBP", lossless=True), _encode(rgb.convert("RGBA"), "WEBP"),
        _encode(rgb, "TIFF"), _encode(rgb, "TIFF", compression="tiff_lzw"), _encode(gray16, "TIFF"),
        _encode(floats, "TIFF"), _encode(rgb.convert("CMYK"), "TIFF"), premultiplied_gray_tiff(),
        _encode(rgb, "BMP"), _encode(rgb.convert("P"), "BMP"), bomb_png(), bomb_webp(),
    ]


SEEDS = _seed_files()


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC, so mutations reach the decoder instead of the checksum check."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    out, at = bytearray(data[:8]), 8
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        end = at + 8 + length
        if end + 4 > len(data):
            break
        out += data[at:end] + struct.pack(">I", zlib.crc32(data[at + 4 : end]))
        at = end + 4
    return bytes(out + data[at:])


@st.composite
def mutated_files(draw) -> bytes:
    """A valid seed with a few byte-level edits, half of them in the header where parsers branch."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        last = max(len(data) - 1, 0)
        if draw(st.booleans()):
            at = draw(st.integers(0, last))
        else:  # inside the header, past the magic bytes, so the chosen decoder still gets to parse it
            at = draw(st.integers(min(12, last), min(96, last)))
        edit = draw(st.sampled_from(["set", "set", "flip", "flip", "insert", "delete", "truncate"]))
        if edit == "set":
            data[at : at + 1] = bytes([draw(st.integers(0, 255))])
        elif edit == "flip":
            data[at : at + 1] = bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) if data else b""
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return _fix_png_crcs(bytes(data)) if draw(st.booleans()) else bytes(data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "input.img"


def assert_sane_or_image_error(path) -> None:
    try:
        image = load_image(path, max_pixels=MAX_PIXELS, min_size=1)
    except ImageError as exc:
        assert str(exc).startswith(f"{path}: {exc.detail}") and exc.reason in REASONS
        return
    assert image.dtype == torch.float32
    assert image.ndim == 3 and image.shape[0] == 3
    assert image.shape[1] * image.shape[2] <= MAX_PIXELS
    assert bool(torch.isfinite(image).all())
    assert image.min().item() >= -1.0 and image.max().item() <= 1.0


def test_every_seed_but_the_bombs_decodes(scratch):
    shapes = []
    for data in SEEDS[:-2]:
        scratch.write_bytes(data)
        shapes.append(tuple(load_image(scratch, max_pixels=MAX_PIXELS, min_size=1).shape))
    small, large = (3, 16, 16), (3, 64, 64)  # rgb16_png and premultiplied_gray_tiff come from the corpus
    assert shapes == [small] * 6 + [large] + [small] * 11 + [large] + [small] * 2


@CORRUPT_TIFF_WARNINGS
@FUZZ
@given(prefix=st.sampled_from(MAGICS), rest=st.binary(max_size=4096))
def test_random_bytes_never_escape_as_other_errors(scratch, prefix, rest):
    scratch.write_bytes(prefix + rest)
    assert_sane_or_image_error(scratch)


@CORRUPT_TIFF_WARNINGS
@FUZZ
@given(data=mutated_files())
def test_mutated_images_never_escape_as_other_errors(scratch, data):
    scratch.write_bytes(data)
    assert_sane_or_image_error(scratch)


PATH_PARTS = ["a", "b.png", "..", ".", "", "in_link", "out_link", "abs_link", "loop1", "~", " ", "x\0",
              "\ud800", "\udcff", "%2e%2e", "..."]


@st.composite
def path_strings(draw) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=40))
    parts = draw(st.lists(st.sampled_from(PATH_PARTS), max_size=8))
    return draw(st.sampled_from(["", "/", "//"])) + "/".join(parts)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/a/b.png, links staying inside, leaving by a relative and an absolute target, and a loop."""
    base = tmp_path_factory.mktemp("paths")
    root, outside = base / "root", base / "outside"
    (root / "a").mkdir(parents=True)
    (outside / "a").mkdir(parents=True)
    (root / "a" / "b.png").write_bytes(b"x")
    (root / "in_link").symlink_to("a")
    (root / "out_link").symlink_to(os.path.join("..", "outside"))
    (root / "abs_link").symlink_to(outside / "a")
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to("loop1")
    return root


@FUZZ
@given(relative=path_strings())
def test_resolved_paths_always_stay_inside_the_root(tree, relative):
    base = tree.resolve()
    try:
        resolved = resolve_under(tree, relative)
    except ImageError as exc:
        assert exc.path == Path(relative) and exc.reason in REASONS
        return
    assert resolved.is_absolute() and resolved.exists()
    assert resolved == base or base in resolved.parents
    assert os.path.realpath(resolved, strict=True) == str(resolved)  # nothing left to follow


def test_a_symlink_loop_does_not_stop_links_from_being_followed(tree):
    """Found by the fuzz above: Python 3.11's lenient resolve gave back root/out_link/... as inside."""
    with pytest.raises(ImageError) as caught:
        resolve_under(tree, "loop1/../out_link/a")
    assert caught.value.reason == "symlink_loop"
