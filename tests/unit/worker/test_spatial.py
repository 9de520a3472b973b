"""The local scores' math on hand-made maps: the worst region and its box, the area above a level,
masks, and the conversion between map positions and image pixels."""

from __future__ import annotations

import pytest
import torch

from worker.perceptual.spatial import cells_to_box, fine_map, grid_ignored, spatial_scores, window_cells


def blob_map() -> torch.Tensor:
    """A 16x16 map of 0.1 with a 2x2 blob of 5.0 at rows 6-7, columns 10-11: a 64x64 image at stride 4."""
    fine = torch.full((1, 1, 16, 16), 0.1)
    fine[0, 0, 6:8, 10:12] = 5.0
    return fine


def test_the_worst_region_is_found_with_its_box_in_image_pixels():
    ((scores, regions),) = spatial_scores(blob_map(), image_size=(64, 64), region_px=8, area_level=1.0)
    assert scores == {"mean": pytest.approx((252 * 0.1 + 4 * 5.0) / 256), "region": pytest.approx(5.0),
                      "area": 4 / 256}
    assert regions == {"region": [40, 24, 8, 8]}  # columns 10-11, rows 6-7, 4 pixels each


def test_a_window_larger_than_the_blob_averages_it_with_its_surroundings():
    ((scores, regions),) = spatial_scores(blob_map(), image_size=(64, 64), region_px=16, area_level=1.0)
    assert scores["region"] == pytest.approx((4 * 5.0 + 12 * 0.1) / 16)
    x, y, w, h = regions["region"]
    assert (w, h) == (16, 16) and x <= 40 and y <= 24 and x + w >= 48 and y + h >= 32  # covers the blob


def test_masked_positions_are_zero_and_left_out_of_mean_and_area():
    ignored = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    ignored[0, 0, 6:8, 10:12] = True
    ((scores, regions),) = spatial_scores(blob_map(), image_size=(64, 64), region_px=8, area_level=1.0,
                                          ignored=ignored)
    assert scores == {"mean": pytest.approx(0.1), "region": pytest.approx(0.1), "area": 0.0}
    x, y, _, _ = regions["region"]
    assert not (32 <= x + 7 and x <= 47 and 20 <= y + 7 and y <= 31)  # its window touches no masked position


def test_everything_masked_scores_zero_without_a_box():
    ignored = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    assert spatial_scores(blob_map(), image_size=(64, 64), region_px=8, area_level=1.0, ignored=ignored) == [
        ({"mean": 0.0, "region": 0.0, "area": 0.0}, {})]


def test_rows_of_a_batch_are_scored_apart():
    both = torch.cat([blob_map(), torch.full((1, 1, 16, 16), 0.25)])
    found = spatial_scores(both, image_size=(64, 64), region_px=8, area_level=0.2)
    assert [round(scores["region"], 6) for scores, _ in found] == [5.0, 0.25]
    assert [scores["area"] for scores, _ in found] == [4 / 256, 1.0]


def test_window_in_map_positions_follows_the_stride():
    assert window_cells(32, (1024, 1024), (255, 255)) == (8, 8)  # alex's first tap: stride ~4
    assert window_cells(32, (1024, 512), (64, 32)) == (2, 2)  # stride 16
    assert window_cells(2, (1024, 1024), (255, 255)) == (1, 1)  # at least one position
    assert window_cells(4096, (100, 60), (25, 15)) == (25, 15)  # at most the whole map


def test_boxes_are_converted_to_image_pixels_and_clipped():
    assert cells_to_box(0, 0, (8, 8), (1024, 1024), (255, 255)) == [0, 0, 33, 33]  # 8 x 4.016 px, rounded out
    assert cells_to_box(250, 247, (8, 8), (1024, 1024), (255, 255)) == [991, 1003, 33, 21]  # clipped at 1024


def test_each_layer_is_upsampled_to_the_first_ones_size_and_summed():
    first = torch.zeros(1, 1, 4, 4)
    second = torch.tensor([[0.0, 4.0], [0.0, 4.0]]).view(1, 1, 2, 2)
    fine = fine_map([first, second, torch.ones(1, 1, 1, 1)])
    assert fine.shape == (1, 1, 4, 4)
    assert fine[0, 0, 0].tolist() == [1.0, 2.0, 4.0, 5.0]  # bilinear, half-pixel centres: 0, 1, 3, 4; plus 1


def test_ignored_pixels_cover_the_map_positions_over_them_plus_a_margin():
    pixels = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    pixels[0, 0, 10, 10] = True  # one pixel: map position (2, 2) at stride 4
    exact = grid_ignored(pixels, (16, 16))
    assert exact.nonzero().tolist() == [[0, 0, 2, 2]]
    grown = grid_ignored(pixels, (16, 16), margin_px=8)  # two positions each way
    assert grown[0, 0].nonzero().tolist() == [[r, c] for r in range(5) for c in range(5)]
