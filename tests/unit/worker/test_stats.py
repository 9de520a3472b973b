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
                     "max": 3.0, "nonfinite": 0, "spatial_std": pytest.approx(math.sqrt(1.5), rel=1e-6), "dead": 0.0}
    assert second == {"sparsity": 0.0, "mean": 5.0, "std": 0.0, "min": 5.0, "max": 5.0, "nonfinite": 0,
                      "spatial_std": 0.0, "dead": 0.0}


def test_spatial_std_is_per_channel_so_a_spatially_empty_image_has_none():
    """Two channels, each constant over space, one at 0 and one at 4: the std over C, H and W is 2,
    the per-channel spatial std 0; and the all-zero channel is dead."""
    empty = torch.zeros(1, 2, 3, 3)
    empty[0, 1] = 4.0
    (row,) = layer_stats(empty)
    assert (row["std"], row["spatial_std"], row["dead"], row["sparsity"]) == (2.0, 0.0, 0.5, 0.5)


def test_spatial_std_averages_each_channels_std_over_space():
    """Channel 0 holds 0 and 2 (std 1), channel 1 holds 1 and 5 (std 2), channel 2 is zero (std 0, dead):
    spatial_std = (1 + 2 + 0) / 3 = 1; one channel of three is dead."""
    x = torch.zeros(1, 3, 1, 2)
    x[0, 0, 0] = torch.tensor([0.0, 2.0])
    x[0, 1, 0] = torch.tensor([1.0, 5.0])
    for layout in (torch.contiguous_format, torch.channels_last):
        (row,) = layer_stats(x.contiguous(memory_format=layout))
        assert (row["spatial_std"], row["dead"]) == (pytest.approx(1.0, rel=1e-6), pytest.approx(1 / 3))


def test_a_channel_is_dead_only_if_near_zero_everywhere():
    x = torch.zeros(1, 4, 5, 5)
    x[0, 0] = 1.0  # alive everywhere
    x[0, 1, 2, 3] = 1e-3  # alive at one position
    x[0, 2] = 5e-7  # below 1e-6 everywhere: dead
    (row,) = layer_stats(x.contiguous(memory_format=torch.channels_last))
    assert row["dead"] == 0.5
    assert row["sparsity"] == pytest.approx((100 - 25 - 1) / 100)


def test_non_finite_values_are_counted_and_left_out_of_the_moments():
    x = torch.tensor([[0.0, float("nan"), 2.0, float("inf")]]).view(1, 1, 2, 2)
    (row,) = layer_stats(x)
    assert row == {"sparsity": 0.25, "mean": 1.0, "std": 1.0, "min": 0.0, "max": 2.0, "nonfinite": 2,
                   "spatial_std": 1.0, "dead": 0.0}


def test_fast_and_masked_paths_agree_on_finite_rows():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(3, 8, 5, 7))
    x[1, 2] = 0.0  # a dead channel
    with_nan = torch.cat([x, torch.full((1, 8, 5, 7), float("nan"))])
    fast, masked = layer_stats(x), layer_stats(with_nan)[:3]
    expected = x.std(dim=(2, 3), unbiased=False).mean(dim=1).tolist()
    assert [row["spatial_std"] for row in fast] == pytest.approx(expected, rel=1e-5)
    assert [row["dead"] for row in fast] == [0.0, 1 / 8, 0.0]
    for a, b in zip(fast, masked):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= 1e-5 for k in a)


def test_channels_last_and_contiguous_layouts_give_the_same_statistics():
    torch.manual_seed(1)
    x = torch.relu(torch.randn(2, 16, 9, 11))
    plain, last = layer_stats(x), layer_stats(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(plain, last):
        assert all(abs(a[k] - b[k]) <= 1e-5 for k in a)


@pytest.mark.parametrize(("precision", "normalise"), [("fp32", "l2"), ("bf16", "l2"), ("fp16", "l2"),
                                                     ("fp32", "instance"), ("fp32", "unit-variance"),
                                                     ("fp32", "none")])
def test_features_taken_a_few_images_at_a_time_equal_the_whole_batch_at_once(monkeypatch, precision, normalise):
    """The statistics and the normaliser run over cache-sized chunks of a layer's images on the CPU: the
    chunks must give the whole batch's values exactly, the fp32 copy of a bf16 trunk's output included,
    and a normaliser that returns a new tensor must land in the layer too."""
    from worker.perceptual import LPIPS, metric
    from worker.perceptual.normalise import NORMALISERS

    torch.manual_seed(0)
    model = LPIPS("alex", trunk_state=None, random_weights=True, precision=precision, normalise=normalise)
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    monkeypatch.setattr(metric, "CHUNK_BYTES", 2**40)
    whole = model.features(x)
    monkeypatch.setattr(metric, "CHUNK_BYTES", 1)  # one image a chunk
    assert metric._cache_sized(whole.layers[0]) == [slice(i, i + 1) for i in range(5)]
    chunked = model.features(x)
    assert all(torch.equal(a, b) for a, b in zip(whole.layers, chunked.layers, strict=True))
    assert all(layer.dtype == torch.float32 for layer in chunked.layers)
    assert chunked.stats == whole.stats and len(chunked.stats[0]) == 5
    raw = model.activations(x)
    with torch.inference_mode():  # the whole layer at once, as features did before it took chunks
        expected = [(NORMALISERS[normalise](r.float().clone()), layer_stats(r.float())) for r in raw]
    assert all(torch.equal(layer, norm) for layer, (norm, _) in zip(chunked.layers, expected, strict=True))
    assert chunked.stats == [stats for _, stats in expected]
