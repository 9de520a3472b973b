"""The generated render-regression corpus (bench/catch_corpus.py) is what the catch bench and the
acceptance test measure the gate against, so it must itself be right: deterministic, each regression
confined to the box it declares, and the good re-renders different from the reference by noise alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.catch_corpus import (
    FULL_SIZE,
    HOT,
    KINDS,
    MAGENTA,
    REGRESSIONS,
    WHOLE_FRAME,
    Scene,
    make_scene,
    regressed,
    regression_render,
    write_corpus,
)

LOCALISED = [name for name in REGRESSIONS if name not in WHOLE_FRAME]
SIDES_AT_1024 = {"fireflies": 40, "texture_dropout": 96, "colour_cast": 128, "shadow_acne": 80, "nan_block": 6,
                 "banding": 128}
CLASSES = ("fireflies", "missing_object", "texture_dropout", "black_frame", "grey_frame", "colour_cast",
           "exposure", "shadow_acne", "nan_block", "banding")


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    """One scene of every kind at the tests' size."""
    return [make_scene(index, size=256) for index in range(len(KINDS))]


def _linear(srgb: np.ndarray) -> np.ndarray:
    return ((srgb / 255 + 0.055) / 1.055) ** 2.4


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_ones(tmp_path: Path) -> None:
    first = write_corpus(tmp_path / "a", size=128, scenes=2, calib=1, test=1)
    second = write_corpus(tmp_path / "b", size=128, scenes=2, calib=1, test=1)
    write_corpus(tmp_path / "c", size=128, scenes=2, calib=1, test=1, seed=1)
    assert first == second
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    a, c = _files(tmp_path / "a"), _files(tmp_path / "c")
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if name.endswith(".png") and not name.startswith(("black", "grey")))


def test_every_folder_holds_every_scene_under_the_same_name_and_the_manifest_names_the_boxes(tmp_path: Path) -> None:
    manifest = write_corpus(tmp_path, size=128, scenes=3, calib=2, test=2)
    folders = ["ref", "good_calib_0", "good_calib_1", "good_test_0", "good_test_1", *CLASSES]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*folders, "manifest.json"])
    for folder in folders:
        assert sorted(path.name for path in (tmp_path / folder).iterdir()) == ["scene_0.png", "scene_1.png",
                                                                               "scene_2.png"]
    assert (manifest["size"], manifest["calib"], manifest["test"]) == (128, ["good_calib_0", "good_calib_1"],
                                                                       ["good_test_0", "good_test_1"])
    assert [scene["kind"] for scene in manifest["scenes"]] == ["sky", "stone", "bricks"]
    assert [scene["sigma"] for scene in manifest["scenes"]] == [6.0, 14.0, 10.0]
    assert tuple(manifest["regressions"]) == CLASSES
    for name, boxes in manifest["regressions"].items():
        assert list(boxes) == ["scene_0.png", "scene_1.png", "scene_2.png"]
        assert all((box is None) == (name in WHOLE_FRAME) for box in boxes.values())


@pytest.mark.parametrize("name", LOCALISED)
def test_a_localised_regression_changes_pixels_inside_its_box_only(scenes: list[Scene], name: str) -> None:
    for scene in scenes:
        good = regression_render(scene, name)
        damaged, box = regressed(scene, name)
        assert box is not None
        x, y, w, h = box
        assert 0 <= x and 0 <= y and x + w <= scene.size and y + h <= scene.size
        changed = (good != damaged).any(axis=2)
        inside = np.zeros_like(changed)
        inside[y:y + h, x:x + w] = True
        assert not changed[~inside].any(), (name, scene.kind)
        share = changed[inside].mean()
        assert share >= (0.05 if name == "fireflies" else 0.6), (name, scene.kind, share)


def test_fireflies_are_a_dozen_isolated_hot_pixels(scenes: list[Scene]) -> None:
    for scene in scenes:
        good = regression_render(scene, "fireflies")
        damaged, _box = regressed(scene, "fireflies")
        rows, cols = np.nonzero((good != damaged).any(axis=2))
        assert 10 <= len(rows) <= 12
        assert (damaged[rows, cols] == HOT).all()
        for row, col in zip(rows, cols):
            neighbours = (np.abs(rows - row) <= 1) & (np.abs(cols - col) <= 1)
            assert neighbours.sum() == 1  # itself only


def test_the_missing_object_is_the_prop_redrawn_as_background(scenes: list[Scene]) -> None:
    for scene in scenes:
        good = regression_render(scene, "missing_object")
        damaged, box = regressed(scene, "missing_object")
        prop = scene.prop_mask
        assert (good != damaged).any(axis=2)[prop].mean() > 0.9
        assert not (good != damaged).any(axis=2)[~prop].any()
        assert np.abs(damaged[prop] - scene.without_prop[prop]).mean() < 2 * scene.sigma
        assert np.abs(good[prop] - scene.without_prop[prop]).mean() > 4 * scene.sigma  # it stood out
        assert box is not None and box[2] == box[3] and abs(box[2] - 12) <= 1  # 48px at 1024, 12 at 256


def test_the_nan_block_is_magenta_and_the_dropout_flat(scenes: list[Scene]) -> None:
    for scene in scenes:
        damaged, (x, y, w, h) = regressed(scene, "nan_block")
        assert (damaged[y:y + h, x:x + w] == MAGENTA).all()
        damaged, (x, y, w, h) = regressed(scene, "texture_dropout")
        assert (damaged[y:y + h, x:x + w] == damaged[y, x]).all()
        damaged, (x, y, w, h) = regressed(scene, "banding")
        assert len(np.unique(damaged[y:y + h, x:x + w])) <= 8


def test_the_whole_frame_regressions(scenes: list[Scene]) -> None:
    for scene in scenes:
        assert (regressed(scene, "black_frame")[0] == 0).all()
        assert (regressed(scene, "grey_frame")[0] == 128).all()
        good = regression_render(scene, "exposure").astype(float)
        brighter = regressed(scene, "exposure")[0].astype(float)
        assert (brighter >= good).all()
        unclipped = good < 200
        assert (brighter[unclipped] > good[unclipped]).mean() > 0.95
        kept = (good > 20) & (brighter < 250)  # off the sRGB curve's linear toe and not clipped
        assert abs(_linear(brighter[kept]).mean() / _linear(good[kept]).mean() - 2**0.5) < 0.02


def test_box_sizes_are_the_issues_at_1024_and_scale_with_the_frame() -> None:
    big, small = make_scene(2, size=FULL_SIZE), make_scene(2, size=512)
    for name, side in SIDES_AT_1024.items():
        assert regressed(big, name)[1][2:] == (side, side)
        assert regressed(small, name)[1][2:] == (max(2, side // 2),) * 2
    prop = regressed(big, "missing_object")[1]
    assert abs(prop[2] - 48) <= 1 and abs(prop[3] - 48) <= 1


def test_good_renders_differ_from_the_reference_by_noise_only(scenes: list[Scene]) -> None:
    for scene in scenes:
        reference = scene.render(0).astype(float)
        for seed in (1, 2, 101, 102):
            render = scene.render(seed).astype(float)
            residual = render - scene.clean
            unclipped = (scene.clean > 3 * scene.sigma) & (scene.clean < 255 - 3 * scene.sigma)
            assert abs(residual[unclipped].mean()) < 0.3
            assert abs(residual[unclipped].std() / scene.sigma - 1) < 0.03
            assert np.abs(residual).max() < 6 * scene.sigma
            difference = (render - reference).reshape(16, 16, 16, 16, 3)  # 16px blocks of the 256px frame
            block_means = difference.mean(axis=(1, 3))
            assert np.abs(block_means).max() < 5 * np.sqrt(2) * scene.sigma / 16
            assert (render != reference).mean() > 0.5
