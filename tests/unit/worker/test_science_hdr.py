"""HDR input: the stated tone map on known values, EXR pairs against their 8-bit PNG twins, bad EXR files."""

from __future__ import annotations

import numpy as np
import OpenEXR
import pytest
import torch

from gate.settings import Settings
from gate.tonemap import tonemap_policy
from worker.engine import build_model
from worker.hdr import (
    load_hdr,
    srgb_decode,
    srgb_encode,
    tonemap,
)
from worker.images import ImageError, load_image
from worker.science import synthetic


def write_exr(path, channels: dict[str, np.ndarray], compression=OpenEXR.ZIP_COMPRESSION):
    OpenEXR.File({"compression": compression, "type": OpenEXR.scanlineimage}, channels).write(str(path))
    return path


def rgb_exr(path, linear: np.ndarray, dtype=np.float32, **options):
    """(H, W, 3) linear values as separate R, G, B channels."""
    return write_exr(path, {c: np.ascontiguousarray(linear[..., i].astype(dtype)) for i, c in enumerate("RGB")},
                     **options)


def codes(seed: int, distortion: str | None = None) -> np.ndarray:
    """An 8-bit (H, W, 3) image: a synthetic reference, optionally distorted."""
    rng = np.random.default_rng(seed)
    image = synthetic.reference(rng, 64)
    if distortion:
        image = synthetic.distort(image, distortion, 2, rng)
    return np.round(image * 255).astype(np.uint8)


def linear_of(code: np.ndarray) -> np.ndarray:
    """Scene-linear values whose sRGB encodings are exactly code / 255."""
    return srgb_decode(torch.from_numpy(code.astype(np.float64) / 255)).numpy()


@pytest.mark.parametrize("linear, exposure, expected", [
    (0.0, 0.0, -1.0),
    (1.0, 0.0, 1.0),
    (7.5, 0.0, 1.0),  # clamped
    (-0.25, 0.0, -1.0),  # clamped
    (0.0031308, 0.0, 2 * 12.92 * 0.0031308 - 1),  # the linear segment's end
    (0.18, 0.0, 2 * 0.46135612950044164 - 1),  # middle gray
    (0.09, 1.0, 2 * 0.46135612950044164 - 1),  # one stop up
    (0.72, -2.0, 2 * 0.46135612950044164 - 1),  # two stops down
])
def test_tonemap_known_values(linear, exposure, expected):
    out = tonemap(torch.tensor([linear], dtype=torch.float64), exposure)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(expected, abs=1e-7)


def test_srgb_curves_invert_each_other():
    values = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.allclose(srgb_encode(srgb_decode(values)), values, atol=1e-12)


def test_tonemap_refuses_non_finite_input():
    with pytest.raises(ValueError, match="exposure must be a finite number of stops, got inf"):
        tonemap(torch.zeros(3), float("inf"))
    with pytest.raises(ValueError, match="linear image contains NaN or infinite values"):
        tonemap(torch.tensor([0.5, float("nan")]), 0.0)


def test_policy_string_names_curve_and_exposure():
    assert tonemap_policy(0.0) == "exr:srgb-clamp-v1:exposure=+0"
    assert tonemap_policy(-1.5) == "exr:srgb-clamp-v1:exposure=-1.5"


def test_exr_and_its_png_twin_are_the_same_tensor(tmp_path):
    code = codes(1)
    synthetic.write_png(tmp_path / "twin.png", code / 255)
    exr = load_hdr(rgb_exr(tmp_path / "a.exr", linear_of(code)))
    png = load_image(tmp_path / "twin.png", max_pixels=10**7)
    assert exr.shape == png.shape == (3, 64, 64)
    assert (exr - png).abs().max().item() <= 1e-6


def test_exr_pair_and_png_pair_give_the_same_distance(tmp_path):
    settings = Settings()
    model, _ = build_model(settings, net="alex", version="0.1")
    ref, cand = codes(2), codes(2, "noise")
    for name, code in (("ref", ref), ("cand", cand)):
        synthetic.write_png(tmp_path / f"{name}.png", code / 255)
        rgb_exr(tmp_path / f"{name}.exr", linear_of(code))
    from_exr = model(load_hdr(tmp_path / "ref.exr")[None], load_hdr(tmp_path / "cand.exr")[None]).item()
    from_png = model(load_image(tmp_path / "ref.png", max_pixels=10**7)[None],
                     load_image(tmp_path / "cand.png", max_pixels=10**7)[None]).item()
    assert from_png > 0.01
    assert abs(from_exr - from_png) <= 1e-4


def test_exposure_scales_before_the_curve(tmp_path):
    code = codes(3)
    half = rgb_exr(tmp_path / "half.exr", linear_of(code) / 2)  # one stop darker, exactly (power of two)
    full = load_hdr(rgb_exr(tmp_path / "full.exr", linear_of(code)))
    assert (load_hdr(half, exposure=1.0) - full).abs().max().item() <= 1e-6
    assert (load_hdr(half) - full).abs().max().item() > 0.1


def test_half_float_and_luminance_only_files(tmp_path):
    gray = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    image = load_hdr(write_exr(tmp_path / "y.exr", {"Y": gray.astype(np.float16)}))
    assert image.shape == (3, 64, 64)
    assert torch.equal(image[0], image[2])
    expected = tonemap(torch.from_numpy(gray.astype(np.float16).astype(np.float64)))
    assert torch.equal(image[1], expected)


def exr_error(path, **options) -> tuple[str, str]:
    """The reason's code and our words for it."""
    with pytest.raises(ImageError) as caught:
        load_hdr(path, **options)
    assert caught.value.path == path
    return caught.value.reason, caught.value.detail


def test_bad_exr_files_are_named_with_the_reason(tmp_path):
    ones = np.ones((64, 64), dtype=np.float32)
    assert exr_error(tmp_path / "missing.exr") == ("missing", "file not found")
    synthetic.write_png(tmp_path / "fake.png", np.zeros((64, 64, 3)))
    (tmp_path / "fake.png").rename(tmp_path / "fake.exr")
    assert exr_error(tmp_path / "fake.exr") == ("not_an_image", "not an OpenEXR file")
    depth = write_exr(tmp_path / "depth.exr", {"Z": ones})
    assert exr_error(depth) == ("unsupported", "EXR has no R, G, B or Y channels (found Z)")
    nan = ones.copy()
    nan[3, 4] = np.nan
    assert exr_error(write_exr(tmp_path / "nan.exr", {"R": nan, "G": ones, "B": ones})) == (
        "nonfinite", "EXR contains NaN or infinite pixel values")
    integer = write_exr(tmp_path / "uint.exr", {c: ones.astype(np.uint32) for c in "RGB"})
    assert exr_error(integer) == ("unsupported", "EXR channel R holds uint32 samples; expected half or float")
    small = write_exr(tmp_path / "small.exr", {c: ones[:20, :24] for c in "RGB"})
    assert exr_error(small) == ("too_small", "image is 24x20; the network needs at least 31x31")
    assert exr_error(rgb_exr(tmp_path / "big.exr", np.ones((64, 64, 3))), max_pixels=4000) == (
        "bomb",
        "image is 64x64 (4096 pixels), more than max_pixels=4000; refusing to decode a possible decompression bomb",
    )


@pytest.mark.parametrize("compression", [OpenEXR.ZIP_COMPRESSION, OpenEXR.NO_COMPRESSION])
def test_truncated_exr_is_refused(tmp_path, compression):
    whole = rgb_exr(tmp_path / "whole.exr", linear_of(codes(4)), compression=compression).read_bytes()
    cut = tmp_path / "cut.exr"
    cut.write_bytes(whole[: len(whole) * 3 // 5])
    assert exr_error(cut) in {("truncated", "truncated or corrupt EXR"),  # and the bindings' words as its cause
                              ("truncated", "truncated or corrupt EXR (no readable pixel data)")}


def test_compare_reads_exr_by_its_magic_bytes_and_states_the_tone_map(tmp_path):
    from click.testing import CliRunner

    from gate.cli import main

    ref, cand = codes(3), codes(3, "blur")
    for name, code in (("ref", ref), ("cand", cand)):
        synthetic.write_png(tmp_path / f"{name}.png", code / 255)
        rgb_exr(tmp_path / f"{name}.exr", linear_of(code))
    rows = []
    for ext in ("exr", "png"):
        result = CliRunner().invoke(main, ["compare", str(tmp_path / f"ref.{ext}"), str(tmp_path / f"cand.{ext}"),
                                           "--json"], obj=Settings())
        assert result.exit_code == 0, result.output
        rows.append(__import__("json").loads(result.stdout))
    assert rows[0]["tonemap"] == "exr:srgb-clamp-v1:exposure=+0" and "tonemap" not in rows[1]
    assert abs(rows[0]["distance"] - rows[1]["distance"]) <= 1e-4


def test_a_candidate_may_keep_its_non_finite_samples_as_nan(tmp_path):
    """A reference is refused for them; a candidate's come back as NaN for its `nonfinite` guard to
    count, every other sample tone-mapped as usual."""
    ones = np.ones((64, 64), dtype=np.float32)
    red, green = ones.copy(), ones.copy()
    red[3, 4], green[10, 20] = np.nan, np.inf
    path = write_exr(tmp_path / "bad.exr", {"R": red, "G": green, "B": ones})
    assert exr_error(path)[0] == "nonfinite"
    image = load_image(path, max_pixels=10**6, keep_nonfinite=True)
    assert torch.isnan(image).nonzero().tolist() == [[0, 3, 4], [1, 10, 20]]
    clean = load_hdr(write_exr(tmp_path / "ones.exr", {"R": ones, "G": ones, "B": ones}))
    finite = torch.isfinite(image)
    assert torch.equal(image[finite], clean[finite])


def test_without_the_exr_extra_an_exr_is_refused_by_name_with_the_remedy(tmp_path, monkeypatch):
    import sys

    from worker.hdr import load_hdr
    from worker.images import ImageError

    monkeypatch.setitem(sys.modules, "OpenEXR", None)  # what a light install without the extra has
    path = tmp_path / "frame.exr"
    path.write_bytes(b"v/1\x01")
    with pytest.raises(ImageError) as refused:
        load_hdr(path)
    assert (refused.value.reason, str(refused.value)) == (
        "unsupported", f"{path}: OpenEXR input needs the exr extra: pip install 'lpips-gate[exr]'"
    )
