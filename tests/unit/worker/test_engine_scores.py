"""The engine's scores on generated renders, real alex weights: every pair gets every score, `mean` is
the distance itself, damage is located, masks take it out of the map's scores (never out of the
distance), and a candidate's non-finite pixels are counted while the rest of it is scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gate.settings import Settings
from gate.vocabulary import SCORES
from tests.scenes import render, scene
from worker.engine import DEFAULT_SCORING, Engine
from worker.masks import Ignore, Scoring

DAMAGE = (100, 60, 48, 48)  # x, y, w, h of the missing object


def overlaps(box, other) -> bool:
    (x, y, w, h), (ox, oy, ow, oh) = box, other
    return x < ox + ow and ox < x + w and y < oy + oh and oy < y + h


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_settings(Settings(max_batch=8), net="alex", device="cpu")


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """ref, a good re-render, the same with a missing object, a black frame; 256x256 PNGs."""
    folder = tmp_path_factory.mktemp("frames")
    clean = scene(3)
    good = render(clean, 2)
    missing = good.copy()
    x, y, w, h = DAMAGE
    missing[y:y + h, x:x + w] = render(np.full((h, w, 3), 90.0), 5)
    for name, pixels in {"ref": render(clean, 1), "good": good, "missing": missing,
                         "black": np.zeros_like(good)}.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def scored(engine, folder, *names, scoring=DEFAULT_SCORING):
    return list(engine.compare_files([(folder / "ref.png", folder / f"{n}.png") for n in names], scoring=scoring))


def test_every_pair_gets_every_score_and_mean_is_the_distance(engine, frames):
    good, missing, black = scored(engine, frames, "good", "missing", "black")
    for outcome in (good, missing, black):
        assert list(outcome.scores) == list(SCORES)
        assert outcome.scores["mean"] == outcome.distance
        assert outcome.scores["region"] > outcome.scores["mean"]
        x, y, w, h = outcome.regions["region"]
        assert 33 <= w <= 34 and 33 <= h <= 34  # 8 positions of 256/63 pixels, rounded out
        assert 0 <= x <= 256 - w and 0 <= y <= 256 - h
    assert {k: good.scores[k] for k in ("fireflies", "flat", "nonfinite", "outliers", "area")} == dict.fromkeys(
        ("fireflies", "flat", "nonfinite", "outliers", "area"), 0.0)
    assert set(good.regions) == {"region", "tone", "levels"}  # the windows with the largest values, always
    assert (black.scores["flat"], black.scores["area"] > 0.5) == (1.0, True)


def test_a_missing_object_is_located_and_stands_out_of_the_noise(engine, frames):
    good, missing = scored(engine, frames, "good", "missing")
    assert overlaps(missing.regions["region"], DAMAGE)
    assert missing.scores["region"] > 3 * good.scores["region"]
    assert missing.scores["region"] / good.scores["region"] > 2 * missing.distance / good.distance  # the mean dilutes


def test_a_mask_takes_damage_out_of_the_map_scores_but_not_out_of_the_distance(engine, frames, tmp_path):
    (good,) = scored(engine, frames, "good")
    (unmasked,) = scored(engine, frames, "missing")
    by_rect = Scoring(ignore={frames / "missing.png": Ignore(rects=(DAMAGE,))})
    mask = np.zeros((256, 256), dtype=np.uint8)
    x, y, w, h = DAMAGE
    mask[y:y + h, x:x + w] = 255
    Image.fromarray(mask).resize((128, 128), Image.NEAREST).save(tmp_path / "mask.png")  # scaled to the frame
    by_image = Scoring(ignore={frames / "missing.png": Ignore(masks=(tmp_path / "mask.png",))})
    (rect,) = scored(engine, frames, "missing", scoring=by_rect)
    (image,) = scored(engine, frames, "missing", scoring=by_image)
    assert rect.distance == image.distance == unmasked.distance
    assert rect.scores == image.scores and rect.regions == image.regions
    assert rect.scores["region"] < 1.2 * good.scores["region"]
    assert not overlaps(rect.regions["region"], DAMAGE)
    assert rect.scores["mean"] < unmasked.distance  # over what the mask leaves


def test_non_finite_candidate_pixels_are_counted_and_scored_as_mid_grey(engine, tmp_path):
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "ref.tif")
    holed, grey = ramp.copy(), ramp.copy()
    holed[20:23, 30:32] = np.nan
    holed[40, 50] = np.inf
    grey[20:23, 30:32] = grey[40, 50] = 0.5
    Image.fromarray(holed).save(tmp_path / "holed.tif")
    Image.fromarray(grey).save(tmp_path / "grey.tif")
    holes, greyed = engine.compare_files([(tmp_path / "ref.tif", tmp_path / n) for n in ("holed.tif", "grey.tif")])
    assert holes.error is None and holes.distance == pytest.approx(greyed.distance, abs=1e-6)
    assert (holes.scores["nonfinite"], holes.regions["nonfinite"]) == (7.0, [30, 20, 21, 21])
    assert greyed.scores["nonfinite"] == 0.0 and "nonfinite" not in greyed.regions
    refused = next(iter(engine.compare_files([(tmp_path / "holed.tif", tmp_path / "ref.tif")])))
    assert refused.error == f"{tmp_path / 'holed.tif'}: float image contains NaN or infinite pixel values"


def test_a_repeated_pair_gets_the_first_ones_scores(engine, frames):
    first, again = scored(engine, frames, "missing", "missing")
    assert (again.scores, again.regions) == (first.scores, first.regions)


def test_boxes_are_in_the_candidates_pixels_when_it_is_resized(frames, tmp_path):
    resizing = Engine.from_settings(Settings(max_batch=8), net="alex", device="cpu", resize="cand")
    with Image.open(frames / "missing.png") as full:
        full.resize((128, 128), Image.BILINEAR).save(tmp_path / "half.png")
    (outcome,) = resizing.compare_files([(frames / "ref.png", tmp_path / "half.png")])
    x, y, w, h = outcome.regions["region"]
    assert 16 <= w <= 18 and 16 <= h <= 18  # the 33-pixel window of the compared size, halved
    assert overlaps((x, y, w, h), tuple(v // 2 for v in DAMAGE))


def test_the_bench_switch_turns_the_scores_off_and_nothing_else(engine, frames):
    (on,) = scored(engine, frames, "missing")
    engine.with_scores = False
    try:
        (off,) = scored(engine, frames, "missing")
    finally:
        engine.with_scores = True
    assert (off.scores, off.regions, off.distance, off.layers) == ({}, {}, on.distance, on.layers)
