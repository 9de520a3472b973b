"""Feature analysis: exact AUC and diversity on constructed inputs, invariances with known outcomes, the report."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gate.settings import Settings
from worker.engine import build_model
from worker.science import synthetic
from worker.science.analyze import (
    Analysis,
    LayerAnalysis,
    _Moments,
    analyse,
    auc,
    bar_chart,
    brighten,
    html_report,
    read_folder,
    shift_1px,
)
from worker.science.bapps import DataError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def alex():
    model, _ = build_model(Settings(), net="alex", version="0.1")
    return model


def texture(seed: int) -> torch.Tensor:
    image = synthetic.reference(np.random.default_rng(seed), 64)
    return torch.from_numpy(image.transpose(2, 0, 1)).float() * 2 - 1


@pytest.mark.parametrize("different, same, expected", [
    ([3.0, 4.0], [1.0, 2.0], 1.0),
    ([1.0, 2.0], [3.0, 4.0], 0.0),
    ([1.0, 1.0], [1.0, 1.0], 0.5),
    ([2.0, 1.0], [1.0], 0.75),
    ([0.5, 2.0, 0.1], [1.0, 0.2], 3 / 6),  # 0.5>0.2, 2>1, 2>0.2
])
def test_auc_known_values(different, same, expected):
    assert auc(np.array(different), np.array(same)) == pytest.approx(expected, abs=1e-12)


def features(*channels: list[float]) -> torch.Tensor:
    """(1, C, 1, P) from per-channel value lists."""
    return torch.tensor(channels, dtype=torch.float64)[None, :, None, :]


@pytest.mark.parametrize("channels, expected, dead", [
    (([1, -1, 1, -1], [1, 1, -1, -1]), 1.0, 0),  # uncorrelated
    (([1, 2, 3, 4], [3, 5, 7, 9], [2, 2, 2, 2]), 0.0, 1),  # perfectly correlated, plus a dead channel
    (([1, -1, 1, -1], [-1, 1, -1, 1], [1, 1, -1, -1]), 2 / 3, 0),  # |corr| 1, 0, 0
    (([1, 2, 3, 4], [0, 0, 0, 0]), None, 1),  # one live channel: undefined
])
def test_diversity_known_values(channels, expected, dead):
    moments = _Moments(len(channels))
    half = len(channels[0]) // 2  # added in two parts: the moments accumulate
    moments.add(features(*[c[:half] for c in channels]))
    moments.add(features(*[c[half:] for c in channels]))
    diversity, found_dead = moments.diversity()
    assert found_dead == dead
    assert diversity == (None if expected is None else pytest.approx(expected, abs=1e-9))


def test_augmentations():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert shift_1px(x).tolist() == [[[[0.0, 0.0, 1.0], [3.0, 3.0, 4.0]]]]
    assert brighten(torch.tensor([0.0, 0.99, -1.0])).tolist() == pytest.approx([0.04, 1.0, -0.96])


def test_duplicates_halve_the_auc(alex):
    """Images A, A, B, B: the cyclic different pairs are (A,B), (A,A), (B,A), (B,B), so half of them
    are identical (distance 0, below every augmented pair) and half are far: AUC exactly 0.5."""
    a, b = texture(1), texture(2)
    result = analyse(alex, [("a1", a), ("a2", a), ("b1", b), ("b2", b)], batch=4, device=CPU)
    assert (result.images, result.same_pairs, result.different_pairs) == (4, 8, 4)
    assert [layer.auc for layer in result.layers] == [0.5] * 5
    assert result.total_auc == 0.5


def test_distinct_textures_are_discriminated(alex):
    named = [(str(i), texture(i)) for i in range(6)]
    result = analyse(alex, named, batch=6, device=CPU)
    assert result.total_auc == 1.0
    assert [layer.name for layer in result.layers] == list(alex.taps)
    assert [layer.channels for layer in result.layers] == [64, 192, 384, 256, 256]
    for layer in result.layers:
        assert 0.5 < layer.diversity < 1.0
        assert 0.0 < layer.stability["brightness"] < layer.stability["shift"] < 1.0


def test_flat_images_do_not_change_under_a_shift(alex):
    white, gray = torch.ones(3, 64, 64), torch.full((3, 64, 64), -0.2)
    result = analyse(alex, [("white", white), ("gray", gray)], batch=2, device=CPU)
    assert [layer.stability["shift"] for layer in result.layers] == [0.0] * 5
    assert all(layer.stability["brightness"] > 0 for layer in result.layers)  # gray got brighter, white could not


def test_pairs_need_two_images_of_one_size(alex):
    with pytest.raises(DataError, match="discriminability needs at least two images of the same size"):
        analyse(alex, [("a", texture(1)), ("b", texture(2)[:, :40])], batch=4, device=CPU)
    with pytest.raises(ValueError, match="batch must be >= 2 to form different pairs, got 1"):
        analyse(alex, [("a", texture(1))], batch=1, device=CPU)


def test_read_folder_errors_name_the_input(tmp_path):
    with pytest.raises(DataError) as caught:
        read_folder(tmp_path, max_pixels=10**7, min_size=31)
    assert str(caught.value) == f"{tmp_path}: no images (PNG, JPEG, WebP, TIFF, BMP or OpenEXR)"
    synthetic.write_png(tmp_path / "small.png", np.zeros((20, 20, 3)))
    with pytest.raises(DataError) as caught:
        read_folder(tmp_path, max_pixels=10**7, min_size=31)
    assert str(caught.value) == f"{tmp_path / 'small.png'}: image is 20x20; the network needs at least 31x31"
    with pytest.raises(DataError, match="not a folder"):
        read_folder(tmp_path / "small.png", max_pixels=10**7, min_size=31)


def test_bar_chart_draws_one_bar_per_present_value():
    svg = bar_chart("t <1>", ["a", "b"], {"x": [0.5, None], "y": [1.0, 2.0]}, top=2.0)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "t &lt;1&gt;" in svg
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([0-9.]+)"', svg)]
    assert heights == [35.0, 70.0, 140.0]  # plot height 140 for top=2.0


def test_html_report_holds_the_table_and_three_charts():
    layers = [LayerAnalysis("features.1", 64, 2, 0.9, {"shift": 0.3, "brightness": 0.02}, 0.75),
              LayerAnalysis("features.4", 192, 0, None, {"shift": 0.2, "brightness": 0.01}, 1.0)]
    page = html_report(Analysis(4, 8, 4, layers, 0.875), title="A <b>", provenance={"net": "alex"})
    assert page.count("<svg") == 3
    assert "<title>A &lt;b&gt;</title>" in page
    row = "<td>features.1</td><td>64</td><td>2</td><td>0.9000</td><td>0.3000</td><td>0.0200</td><td>0.7500</td>"
    assert row in page
    assert "<td>features.4</td><td>192</td><td>0</td><td>-</td>" in page
    assert "total-distance AUC 0.8750" in page and "net alex" in page
