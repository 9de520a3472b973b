"""Pixel guards on generated renders: zero on good re-renders at every noise level, and each regression
counted and boxed where it was planted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.scenes import hot_pixels, mid_tone, render, scene, to_tensor
from worker.guards import pixel_guards, take_nonfinite

NOTHING = {"fireflies": 0.0, "flat": 0.0, "outliers": 0.0}


def guards(ref: np.ndarray, cand: np.ndarray, ignored: np.ndarray | None = None):
    mask = None if ignored is None else torch.from_numpy(ignored)[None, None]
    ((scores, regions),) = pixel_guards(to_tensor(ref)[None], to_tensor(cand)[None], mask)
    return scores, regions


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("sigma", [0, 7, 14, 28])
def test_good_re_renders_trip_no_guard(size, sigma):
    for seed in range(3):
        clean = scene(seed, size)
        assert guards(render(clean, 100 + seed, sigma), render(clean, 200 + seed, sigma)) == (NOTHING, {})


def test_a_batch_is_judged_pair_by_pair():
    clean = scene(1)
    ref, good = render(clean, 1), render(clean, 2)
    found = pixel_guards(torch.stack([to_tensor(ref)] * 2), torch.stack([to_tensor(good), to_tensor(ref * 0)]))
    assert [scores for scores, _ in found] == [NOTHING, {"fireflies": 0.0, "flat": 1.0, "outliers": 0.0}]


@pytest.mark.parametrize("seed", range(3))
def test_a_dozen_hot_pixels_are_counted_and_boxed(seed):
    clean = mid_tone(scene(seed), 100, 60, 40)
    ref, cand = render(clean, 1), render(clean, 2)
    damaged, (rows, cols) = hot_pixels(cand, 100, 60, seed=seed)
    scores, regions = guards(ref, damaged)
    box = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
    assert (scores["fireflies"], regions["fireflies"]) == (12.0, box)
    assert scores["flat"] == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_a_magenta_block_is_an_outlier(seed):
    clean = mid_tone(scene(seed), 150, 30, 30)
    ref, cand = render(clean, 1), render(clean, 2)
    cand[40:46, 160:166] = (255, 0, 255)
    scores, regions = guards(ref, cand)
    assert (scores["outliers"], regions["outliers"]) == (36.0, [160, 40, 6, 6])
    assert (scores["fireflies"], scores["flat"]) == (0.0, 0.0)


@pytest.mark.parametrize("blank", ["black", "grey", "noisy black", "noisy grey"])
def test_a_blank_candidate_is_flat(blank):
    clean = scene(4)
    level = 0 if "black" in blank else 128
    cand = render(np.full(clean.shape, float(level)), 9, 14 if "noisy" in blank else 0)
    scores, regions = guards(render(clean, 1), cand)
    assert scores["flat"] == 1.0 and "flat" not in regions
    assert guards(cand, cand)[0]["flat"] == 0.0  # a blank reference: nothing to lose


def test_ignored_pixels_count_for_no_guard():
    clean = mid_tone(scene(2), 100, 60, 40)
    ref, cand = render(clean, 1), render(clean, 2)
    damaged, _ = hot_pixels(cand, 100, 60)
    damaged[10:16, 10:16] = (255, 0, 255)
    ignored = np.zeros(ref.shape[:2], dtype=bool)
    ignored[55:105, 95:145] = True
    scores, regions = guards(ref, damaged, ignored)
    assert scores["fireflies"] == 0.0 and "fireflies" not in regions
    assert scores["outliers"] >= 1 and regions["outliers"][:2] == [10, 10]  # the block outside the mask still counts


def test_non_finite_candidate_pixels_are_counted_boxed_and_zeroed():
    cand = torch.zeros(3, 8, 10)
    cand[0, 2, 3] = float("nan")
    cand[2, 5, 7] = float("inf")
    cand[1, 6, 1] = -float("inf")
    assert take_nonfinite(cand) == (3, [1, 2, 7, 5])
    assert torch.isfinite(cand).all() and cand.abs().sum() == 0
    fine = torch.ones(3, 8, 10)
    assert take_nonfinite(fine) == (0, None) and torch.equal(fine, torch.ones(3, 8, 10))


def test_non_finite_pixels_under_a_mask_are_not_counted():
    cand = torch.zeros(3, 8, 10)
    cand[:, 2, 3] = float("nan")
    cand[:, 7, 9] = float("nan")
    ignored = np.zeros((8, 10), dtype=bool)
    ignored[7, 9] = True
    assert take_nonfinite(cand, ignored) == (1, [3, 2, 1, 1])
    assert torch.isfinite(cand).all()


def test_a_firefly_is_judged_against_all_eight_neighbours():
    """On flat grey (no noise: the floor levels apply), a 3x3 white block: its centre has eight white
    neighbours and is no firefly; each of the other eight has grey ones and is."""
    ref = np.full((64, 64, 3), 120, dtype=np.uint8)
    cand = ref.copy()
    cand[20:23, 30:33] = 255
    scores, regions = guards(ref, cand)
    assert (scores["fireflies"], regions["fireflies"]) == (8.0, [30, 20, 3, 3])


def test_an_outlier_is_judged_against_the_whole_5x5_window_of_the_reference():
    """A candidate pixel as bright as a reference pixel two rows down and one column right is within the
    reference's local range; three rows down, it is not."""
    ref = np.full((64, 64, 3), 120, dtype=np.uint8)
    ref[22, 31] = ref[43, 11] = 250
    cand = ref.copy()
    cand[20, 30] = cand[40, 10] = 250
    scores, regions = guards(ref, cand)
    assert (scores["outliers"], regions["outliers"]) == (1.0, [10, 40, 1, 1])
