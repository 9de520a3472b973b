"""The report's pictures as the worker makes them: heatmaps on the fixed scale (a near-identical pair
stays dark, a broken one saturates), previews shrunk to THUMBNAIL_PX, EXR previews tone-mapped as the
distance saw them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gate.report.model import frame_size
from gate.settings import Settings
from gate.vocabulary import HEATMAP_LEVELS, HEATMAP_RAMP, THUMBNAIL_PX
from tests.scenes import mid_tone, render, scene
from tests.unit.worker.test_science_hdr import linear_of, rgb_exr
from worker.engine import Engine
from worker.heatmap import heatmap_png
from worker.previews import HEATMAP_PX, previews, thumbnail
from worker.runtime import Measurement

SIDE = 256


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_settings(Settings(max_batch=8), net="alex", device="cpu")


def _measured(engine: Engine, ref, cand) -> Measurement:
    [outcome] = engine.compare_files([(ref, cand)], with_map=True)
    return Measurement.of(outcome, net="alex", weights_version=engine.weights_version, precision="fp32")


def _shares(png: bytes) -> np.ndarray:
    """The heatmap's values as shares of the scale, read from its palette steps (1.0: the scale and above)."""
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "P"
        palette = image.getpalette()[:3 * HEATMAP_LEVELS]
        assert tuple(palette[:3]) == HEATMAP_RAMP[0] and tuple(palette[-3:]) == HEATMAP_RAMP[-1]
        return np.asarray(image) / (HEATMAP_LEVELS - 1)


def test_heatmaps_share_one_scale_a_re_render_stays_dark_and_damage_saturates(engine, tmp_path):
    clean = scene(3, SIDE)
    for name, frame in (("ref", render(clean, 1)), ("again", render(clean, 2)),
                        ("broken", render(mid_tone(clean, 96, 96, 64), 2))):
        Image.fromarray(frame).save(tmp_path / f"{name}.png")
    again = previews(_measured(engine, tmp_path / "ref.png", tmp_path / "again.png"), exposure=0.0,
                     max_pixels=10**7)
    broken = previews(_measured(engine, tmp_path / "ref.png", tmp_path / "broken.png"), exposure=0.0,
                      max_pixels=10**7)
    calm, hot = _shares(again["heatmap_png"]), _shares(broken["heatmap_png"])
    assert calm.shape == hot.shape == (HEATMAP_PX, HEATMAP_PX)  # half the previews' size
    assert calm.max() < 0.25 and calm.mean() < 0.1  # sampling noise: the dark end of the ramp
    patch = hot[60:100, 60:100]  # the damage at 96-160 of 256 pixels
    assert hot.max() == 1.0 and (patch > 0.5).mean() > 0.7  # the patch: the hot half and above
    assert np.median(hot) < 0.1  # and the rest of the frame is as dark as the re-render
    assert frame_size(broken["heatmap_png"]) == (SIDE, SIDE)
    for side in ("ref_thumb", "cand_thumb"):
        with Image.open(io.BytesIO(broken[side])) as preview:
            assert (preview.format, preview.size) == ("WEBP", (SIDE, SIDE))


def test_a_shrunk_heatmap_averages_the_map_and_keeps_the_candidate_size():
    import torch

    values = torch.zeros(1080, 1920)
    values[:540] = 2.0  # above the scale: saturates
    png = heatmap_png(values, longest=THUMBNAIL_PX, frame=(1920, 1080))
    shares = _shares(png)
    assert shares.shape == (180, 320) and frame_size(png) == (1920, 1080)
    assert (shares[:89] == 1.0).all() and (shares[91:] == 0).all()


def test_exr_previews_are_tone_mapped_at_the_run_exposure(tmp_path):
    codes = np.tile(np.linspace(20, 235, 640).round().astype(np.uint8)[None, :, None], (360, 1, 3))
    Image.fromarray(codes).save(tmp_path / "twin.png")
    rgb_exr(tmp_path / "frame.exr", linear_of(codes))
    shown = {}
    for name, exposure in (("twin.png", 0.0), ("frame.exr", 0.0), ("frame.exr", -2.0)):
        data, size = thumbnail(tmp_path / name, exposure=exposure, max_pixels=10**7)
        assert size == (640, 360)
        with Image.open(io.BytesIO(data)) as preview:
            assert preview.size == (THUMBNAIL_PX, 180)
            shown[name, exposure] = np.asarray(preview.convert("RGB")).astype(float)
    exr = shown["frame.exr", 0.0]
    assert 100 < exr.mean() < 150 and exr.std() > 40  # neither black nor white: a tone-mapped ramp
    assert np.abs(exr - shown["twin.png", 0.0]).mean() < 2  # as its 8-bit twin, which the distance also matches
    assert shown["frame.exr", -2.0].mean() < exr.mean() - 30  # two stops down is darker
