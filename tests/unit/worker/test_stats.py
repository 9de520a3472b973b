"""Feature statistics: exact values on hand-made activations, finite and not."""

import math

import pytest
import torch

from worker.perceptual.stats import layer_stats


def test_stats_of_known_activations():
    x = torch.tensor([[0.0, 0.0, 1.0, 3.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    x[1] = 5.0
    first, second = layer_stats(x)
    assert first == {"sparsity": 0.5, "mean": 1.0, "std": pytest.approx(math.sqrt(1.5), rel=1e-6), "min": 0.0,
                     "max": 3.0, "nonfinite": 0}
    assert second == {"sparsity": 0.0, "mean": 5.0, "std": 0.0, "min": 5.0, "max": 5.0, "nonfinite": 0}


def test_non_finite_values_are_counted_and_left_out_of_the_moments():
    x = torch.tensor([[0.0, float("nan"), 2.0, float("inf")]]).view(1, 1, 2, 2)
    (row,) = layer_stats(x)
    assert row == {"sparsity": 0.25, "mean": 1.0, "std": 1.0, "min": 0.0, "max": 2.0, "nonfinite": 2}


def test_fast_and_masked_paths_agree_on_finite_rows():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(3, 8, 5, 7))
    with_nan = torch.cat([x, torch.full((1, 8, 5, 7), float("nan"))])
    fast, masked = layer_stats(x), layer_stats(with_nan)[:3]
    for a, b in zip(fast, masked):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= 1e-5 for k in a)
