"""worker.images against the shared corpus: exact tensors for good inputs; for bad ones the reason's code, the
file and our exact words (what Pillow or the OS adds is theirs: its presence is checked, never its wording)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageFile

from tests.corpus import (
    PALETTE,
    float_ramp,
    gray16_ramp,
    gray_ramp,
    halves,
    make_corpus,
    palette_indices,
    rgb_pixels,
)
from worker.images import (
    MIN_SIZE,
    SAFE_MIN_SIZE,
    ImageError,
    SizeMismatchError,
    content_hash,
    load_image,
    match_sizes,
    resolve_under,
)

MAX_PIXELS = 64_000_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def load(path, **limits):
    return load_image(path, max_pixels=limits.pop("max_pixels", MAX_PIXELS), **limits)


def load_pair(ref, cand, *, resize="none"):
    """What the engine does with a pair: decode both sides, then match their sizes."""
    return match_sizes(ref, cand, load(ref, min_size=31), load(cand, min_size=31), resize=resize)


def expected_rgb(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32).transpose(2, 0, 1) / 255) * 2 - 1


def expected_gray(samples: np.ndarray, full_scale: int) -> torch.Tensor:
    return (torch.from_numpy(samples.astype(np.float32) / full_scale) * 2 - 1).expand(3, -1, -1)


def message(corpus, name, reason):
    return f"{corpus[name]}: {reason}"


# --- good inputs: exact tensors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "seed"),
    [("good_ref", 1), ("good_cand", 2), ("rgb16_png", 3), ("rgb16_tiff", 3), ("rgba_png", 4), ("webp", 5),
     ("bmp", 6), ("inside_link", 1)],
)
def test_rgb_images_decode_to_their_exact_pixels(corpus, name, seed):
    image = load(corpus[name])
    assert image.dtype == torch.float32
    assert image.shape == (3, 64, 64)
    assert torch.equal(image, expected_rgb(rgb_pixels(seed)))
    assert (image.min().item(), image.max().item()) == (-1.0, 1.0)
    assert image[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert image[:, -1, -1].tolist() == [1.0, 1.0, 1.0]


def test_rgba_alpha_is_dropped_not_composited(corpus):
    image = load(corpus["rgba_png"])
    transparent_column = image[:, :, 0]  # alpha 0 there: colour must still be the stored RGB
    assert torch.equal(transparent_column, expected_rgb(rgb_pixels(4))[:, :, 0])
    assert transparent_column.max().item() > -1.0  # not composited over black


def test_gray_8bit_is_replicated_to_three_identical_channels(corpus):
    image = load(corpus["gray_png"])
    assert torch.equal(image, expected_gray(gray_ramp(), 255))
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert image[0, 0, 0].item() == -1.0 and image[0, 0, -1].item() == 1.0


@pytest.mark.parametrize("name", ["gray16_png", "gray16_tiff"])
def test_16bit_gray_is_scaled_by_65535(corpus, name):
    image = load(corpus[name])
    assert torch.equal(image, expected_gray(gray16_ramp(), 65535))
    assert image[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]  # sample 0
    assert image[:, -1, -1].tolist() == [1.0, 1.0, 1.0]  # sample 65535
    assert image[0, 0, 1].item() == pytest.approx(16 / 65535 * 2 - 1, abs=1e-7)  # sample 16, not 16/255


def test_float_tiff_is_taken_as_unit_range_and_clamped(corpus):
    image = load(corpus["float_tiff"])
    assert torch.equal(image, expected_gray(np.clip(float_ramp(), 0, 1), 1))
    assert int((image[0] == -1).sum()) == int((float_ramp() <= 0).sum())
    assert int((image[0] == 1).sum()) == int((float_ramp() >= 1).sum())


def test_palette_colours_are_expanded_and_its_transparency_dropped(corpus):
    image = load(corpus["palette_png"])
    red = torch.from_numpy(palette_indices() == 0)
    assert PALETTE == [(255, 0, 0), (0, 0, 255)]
    assert torch.equal(image[0], torch.where(red, 1.0, -1.0))
    assert torch.equal(image[1], torch.full((64, 64), -1.0))
    assert torch.equal(image[2], torch.where(red, -1.0, 1.0))


def test_premultiplied_alpha_is_unpremultiplied_then_dropped(corpus):
    image = load(corpus["premultiplied_gray_tiff"])  # stored gray 64 under alpha 128
    assert torch.equal(image, expected_gray(np.full((64, 64), 127), 255))


def test_cmyk_jpeg_becomes_rgb(corpus):
    image = load(corpus["cmyk_jpeg"])
    cyan, white = image[:, :, :28], image[:, :, 36:]  # away from the JPEG block edge at column 32
    assert image.shape == (3, 64, 64)
    assert torch.allclose(cyan[0], torch.tensor(-1.0), atol=0.05)
    assert torch.allclose(cyan[1:], torch.tensor(1.0), atol=0.05)
    assert torch.allclose(white, torch.tensor(1.0), atol=0.05)


def test_min_size_is_inclusive(corpus):
    assert load(corpus["tiny_8x8"], min_size=8).shape == (3, 8, 8)
    assert torch.equal(load(corpus["tiny_1x1"], min_size=1), expected_rgb(rgb_pixels(7, 1, 1)))


def test_max_pixels_is_inclusive(corpus):
    assert load(corpus["good_ref"], max_pixels=64 * 64).shape == (3, 64, 64)
    with pytest.raises(ImageError) as caught:
        load(corpus["good_ref"], max_pixels=64 * 64 - 1)
    assert caught.value.reason == "bomb"
    assert str(caught.value) == message(
        corpus, "good_ref",
        "image is 64x64 (4096 pixels), more than max_pixels=4095; refusing to decode a possible decompression bomb",
    )


# --- bad inputs: the reason, the file, our words -------------------------------------------------

BOMB = "refusing to decode a possible decompression bomb"
BAD_INPUTS = {  # name -> (reason, the message after the file's name)
    "not_image": ("not_an_image", "not an image file (expected PNG, JPEG, WebP, TIFF, BMP or OpenEXR)"),
    "empty": ("empty", "empty file"),
    "bomb_png": ("bomb", f"image is 50000x50000 (2500000000 pixels), more than max_pixels=64000000; {BOMB}"),
    "bomb_webp": ("bomb", f"image is 16383x16383 (268402689 pixels), more than max_pixels=64000000; {BOMB}"),
    "nan_tiff": ("nonfinite", "float image contains NaN or infinite pixel values"),
    "tiny_1x1": ("too_small", "image is 1x1; the network needs at least 31x31"),
    "tiny_8x8": ("too_small", "image is 8x8; the network needs at least 31x31"),
    "loop_link": ("unreadable", f"cannot read file ({os.strerror(errno.ELOOP)})"),
    "root": ("not_a_file", "not a regular file"),
}


@pytest.mark.parametrize(("name", "reason", "text"), [(n, *v) for n, v in BAD_INPUTS.items()], ids=list(BAD_INPUTS))
def test_bad_input_names_the_file_and_the_reason(corpus, name, reason, text):
    with pytest.raises(ImageError) as caught:
        load(corpus[name])
    assert str(caught.value) == message(corpus, name, text)
    assert (caught.value.path, caught.value.reason) == (corpus[name], reason)


def test_a_float_tiff_may_keep_its_non_finite_samples_as_nan(corpus):
    """For a candidate: its NaN sample comes back NaN (the guard counts it), the rest as decoded."""
    image = load(corpus["nan_tiff"], keep_nonfinite=True)
    assert torch.isnan(image).nonzero().tolist() == [[0, 5, 7], [1, 5, 7], [2, 5, 7]]  # gray: all three channels
    expected = torch.from_numpy(np.clip(float_ramp(), 0, 1) * 2 - 1)
    finite = torch.isfinite(image[0])
    assert torch.equal(image[0][finite], expected[finite])


@pytest.mark.parametrize("name", ["truncated_png", "truncated_jpeg"])
def test_truncated_images_say_so_in_our_words_then_in_the_decoders(corpus, name):
    with pytest.raises(ImageError) as caught:
        load(corpus[name])
    error = caught.value
    assert (error.path, error.reason, error.detail) == (corpus[name], "truncated", "truncated or corrupt image")
    assert error.cause  # Pillow's own words: present, but theirs to change
    assert str(error) == f"{corpus[name]}: truncated or corrupt image ({error.cause})"


def test_min_size_message_says_which_minimum(corpus):
    with pytest.raises(ImageError, match=r"image is 8x8; the network needs at least 16x16$"):
        load(corpus["tiny_8x8"], min_size=16)


def test_missing_file_and_non_directory_parent(corpus):
    with pytest.raises(ImageError) as missing:
        load(corpus["root"] / "missing.png")
    with pytest.raises(ImageError) as under_file:
        load(corpus["good_ref"] / "x.png")
    assert (missing.value.reason, str(missing.value)) == (
        "missing", f"{corpus['root'] / 'missing.png'}: file not found")
    assert (under_file.value.reason, under_file.value.detail, under_file.value.cause) == (
        "unreadable", "cannot read file", os.strerror(errno.ENOTDIR))
    assert str(under_file.value) == f"{corpus['good_ref'] / 'x.png'}: cannot read file ({os.strerror(errno.ENOTDIR)})"


@pytest.mark.parametrize(
    ("name", "reason"),
    [("a\0b.png", "path contains a NUL byte"), ("\ud800.png", "path has characters no file name can hold")],
)
def test_impossible_file_names_are_image_errors(name, reason):
    with pytest.raises(ImageError) as caught:
        load(name)
    assert (caught.value.reason, str(caught.value)) == ("bad_name", f"{name}: {reason}")
    with pytest.raises(ImageError):
        content_hash(name)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_text(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert outcome == [f"{fifo}: not a regular file"]


def _error_text(path):
    try:
        load(path)
    except ImageError as exc:
        return str(exc)
    return "loaded"


def test_pillow_own_bomb_limit_still_applies_above_max_pixels(corpus):
    pixels, max_pixels = 16_383 * 16_383, 10**9
    assert 2 * Image.MAX_IMAGE_PIXELS < pixels <= max_pixels  # our limit lets it through, Pillow's does not
    with pytest.raises(ImageError) as caught:
        load(corpus["bomb_webp"], max_pixels=max_pixels)
    error = caught.value
    assert (error.path, error.reason, error.detail) == (
        corpus["bomb_webp"], "bomb", "refused as a decompression bomb by Pillow")
    assert error.cause  # Pillow's own words: present, but theirs to change
    assert str(error) == f"{corpus['bomb_webp']}: refused as a decompression bomb by Pillow ({error.cause})"


def test_loading_leaves_pillow_global_state_and_warnings_alone(corpus):
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("good_ref", "bomb_png", "bomb_webp", "truncated_png", "gray16_tiff", "webp"):
            try:
                load(corpus[name])
            except ImageError:
                pass
    assert [str(w.message) for w in caught] == []
    assert Image.MAX_IMAGE_PIXELS == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("limits", "text"),
    [({"max_pixels": 0}, "max_pixels must be positive, got 0"), ({"min_size": 0}, "min_size must be positive, got 0")],
)
def test_limits_are_validated_before_reading(limits, text):
    with pytest.raises(ValueError) as caught:
        load("never-read.png", **limits)
    assert str(caught.value) == text
    assert not isinstance(caught.value, ImageError)


def test_image_error_survives_pickle_and_json_like_celery_ships_it(corpus):
    errors = [ImageError(corpus["empty"], "empty", "empty file"),
              ImageError("t.png", "truncated", "truncated or corrupt image", "the decoder's words"),
              SizeMismatchError("a.png", "b.png", (64, 48), (32, 32))]
    for error in errors:
        for copy in (pickle.loads(pickle.dumps(error)), type(error)(*json.loads(json.dumps(error.args)))):
            assert type(copy) is type(error)
            assert str(copy) == str(error)
            assert (copy.path, copy.reason, copy.detail, copy.cause) == (
                error.path, error.reason, error.detail, error.cause)


# --- pairs ----------------------------------------------------------------------------------------


def test_pair_of_equal_size_is_returned_as_decoded(corpus):
    ref, cand = load_pair(corpus["good_ref"], corpus["good_cand"], resize="ref")
    assert torch.equal(ref, expected_rgb(rgb_pixels(1)))
    assert torch.equal(cand, expected_rgb(rgb_pixels(2)))


def test_size_mismatch_names_both_files_and_sizes(corpus):
    with pytest.raises(SizeMismatchError) as caught:
        load_pair(corpus["mismatch_ref"], corpus["mismatch_cand"])
    assert str(caught.value) == (
        f"{corpus['mismatch_ref']} (64x48) and {corpus['mismatch_cand']} (32x32): "
        "sizes differ; pass --resize ref|cand to resize"
    )
    assert isinstance(caught.value, ImageError)
    assert (caught.value.path, caught.value.cand) == (corpus["mismatch_ref"], corpus["mismatch_cand"])
    assert (caught.value.reason, caught.value.cause) == ("size_mismatch", None)


@pytest.mark.parametrize(("resize", "height", "width"), [("ref", 32, 32), ("cand", 48, 64)])
def test_resize_brings_one_side_to_the_other(corpus, resize, height, width):
    ref, cand = load_pair(corpus["mismatch_ref"], corpus["mismatch_cand"], resize=resize)
    untouched, resized = (cand, ref) if resize == "ref" else (ref, cand)
    assert ref.shape == cand.shape == (3, height, width)
    assert torch.equal(untouched, expected_rgb(halves(width, height)))
    assert torch.allclose(resized[:, :, 0], torch.tensor(-1.0), atol=1e-6)  # black stays black at the edge
    assert torch.allclose(resized[:, :, -1], torch.tensor(1.0), atol=1e-6)
    assert resized.min().item() >= -1.0 and resized.max().item() <= 1.0
    assert bool((resized.diff(dim=-1) >= 0).all())  # a step edge stays monotonic: no ringing
    assert -1.0 < resized[0, 0, width // 2 - 1].item() < 1.0  # and it is blended, not nearest


def test_pair_error_names_the_bad_side(corpus):
    with pytest.raises(ImageError) as caught:
        load_pair(corpus["good_ref"], corpus["truncated_png"])
    assert (caught.value.path, caught.value.reason) == (corpus["truncated_png"], "truncated")



# --- paths under the image root -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "target"),
    [("good_ref.png", "good_ref.png"), ("sub/nested.png", "sub/nested.png"), ("sub/../good_ref.png", "good_ref.png"),
     ("./sub//nested.png", "sub/nested.png"), ("alias.png", "good_ref.png"), ("sub", "sub")],
)
def test_paths_inside_the_root_resolve(corpus, relative, target):
    assert resolve_under(corpus["root"], relative) == corpus["root"].resolve() / target


def test_symlinked_root_is_resolved_too(corpus, tmp_path):
    link = tmp_path / "root-link"
    link.symlink_to(corpus["root"], target_is_directory=True)
    assert resolve_under(link, "good_ref.png") == corpus["root"].resolve() / "good_ref.png"


ESCAPES = ("escapes_root", "path escapes the image root")
LOOP = ("symlink_loop", "symlink loop")
MISSING = ("missing", "file not found")


@pytest.mark.parametrize(
    ("relative", "reason", "text"),
    [("escape.png", *ESCAPES),
     ("../outside/secret.png", *ESCAPES),
     ("sub/../../outside/secret.png", *ESCAPES),
     ("..", *ESCAPES),
     ("../outside/not-there.png", *ESCAPES),
     ("loop_a.png", *LOOP),
     ("loop_a.png/../escape.png", *LOOP),
     ("not-there.png", *MISSING),
     ("not-there/../good_ref.png", *MISSING),
     ("not-there/../loop_a.png", *MISSING),
     ("good_ref.png/x.png", *MISSING),
     ("x" * 300 + ".png", "unreadable", f"cannot resolve path ({os.strerror(errno.ENAMETOOLONG)})"),
     ("a\0b.png", "bad_name", "path contains a NUL byte"),
     ("\ud800.png", "bad_name", "path has characters no file name can hold"),
     ("", "bad_name", "empty path")],
)
def test_paths_leaving_the_root_are_refused(corpus, relative, reason, text):
    with pytest.raises(ImageError) as caught:
        resolve_under(corpus["root"], relative)
    assert (caught.value.reason, str(caught.value)) == (reason, f"{relative}: {text}")


def test_absolute_paths_are_refused_even_inside_the_root(corpus):
    inside = str(corpus["good_ref"])
    with pytest.raises(ImageError) as caught:
        resolve_under(corpus["root"], inside)
    assert caught.value.reason == "absolute"
    assert str(caught.value) == f"{inside}: absolute path; task paths are relative to the image root"


# --- content hash ---------------------------------------------------------------------------------


def test_content_hash_is_sha256_of_the_bytes(corpus, tmp_path):
    known = tmp_path / "abc.bin"
    known.write_bytes(b"abc")
    assert content_hash(known) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash(corpus["good_ref"]) == hashlib.sha256(corpus["good_ref"].read_bytes()).hexdigest()
    assert content_hash(corpus["inside_link"]) == content_hash(corpus["good_ref"])
    assert content_hash(corpus["good_ref"]) != content_hash(corpus["good_cand"])


def test_content_hash_of_a_missing_file_is_an_image_error(corpus):
    with pytest.raises(ImageError, match=r"missing\.png: file not found$"):
        content_hash(corpus["root"] / "missing.png")


# --- the honest minimum size ----------------------------------------------------------------------

TRUNKS = {  # torchvision trunk, how much of it LPIPS uses, and the indices of the layers it taps
    "alex": (torchvision.models.alexnet, 12, (1, 4, 7, 9, 11)),
    "vgg": (torchvision.models.vgg16, 30, (3, 8, 15, 22, 29)),
    "squeeze": (torchvision.models.squeezenet1_1, 13, (1, 4, 7, 9, 10, 11, 12)),
}


def run_trunk(net: str, side: int) -> tuple[list[tuple[int, int]], tuple[torch.nn.Module, tuple[int, int]] | None]:
    """The spatial size at each tapped layer, and the layer torch refused to run with the size it was
    given (None when every layer ran)."""
    build, depth, taps = TRUNKS[net]
    with torch.device("meta"):  # only shapes matter: skip initialising weights, classifier included
        model = build(weights=None)
    features = model.features[:depth].to_empty(device="cpu").eval()
    x, sizes = torch.zeros(1, 3, side, side), []
    with torch.no_grad():
        for index, layer in enumerate(features):
            try:
                x = layer(x)
            except RuntimeError:
                return sizes, (layer, tuple(x.shape[-2:]))
            if index in taps:
                sizes.append(tuple(x.shape[-2:]))
    return sizes, None


@pytest.mark.parametrize("net", list(TRUNKS))
def test_min_size_is_the_smallest_side_every_tapped_layer_survives(net):
    sizes, refused = run_trunk(net, MIN_SIZE[net])
    assert (min(sizes), len(sizes), refused) == ((1, 1), len(TRUNKS[net][2]), None)
    _, (layer, given) = run_trunk(net, MIN_SIZE[net] - 1)
    assert isinstance(layer, torch.nn.MaxPool2d)
    assert max(given) < layer.kernel_size  # a pooling window that no longer fits what is left of the image


def test_default_min_size_suits_every_net():
    assert MIN_SIZE == {"alex": 31, "vgg": 16, "squeeze": 17}
    assert SAFE_MIN_SIZE == 31
