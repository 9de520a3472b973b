"""The tone and levels guards on generated frames: noise keeps them small, a tone shift or banding
does not, and each is located on its window."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worker.tone import STEP, _distinct, block_means, levels_lost, tone_shifts, window_means

SIZE, WINDOW = 128, 32


def _frames(seed: int, sigma: float = 14.0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A smooth gradient rendered twice with different noise: (ref, cand) in [-1, 1], and the clean frame."""
    ramp = np.linspace(40, 215, SIZE)
    clean = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1)
    rng = np.random.default_rng(seed)
    renders = [np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).round() for _ in range(2)]
    return (*(_tensor(render) for render in renders), clean)


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1)[None].float()


def test_noise_alone_moves_no_window_mean_by_more_than_two_levels_nor_loses_levels():
    ref, cand, _ = _frames(0)
    ((tone, _box),) = tone_shifts(ref, cand, WINDOW)
    ((lost, _box),) = levels_lost(ref, cand, WINDOW)
    assert tone < 2.0 and lost < 0.15


def test_a_colour_cast_on_one_region_is_measured_in_levels_and_located():
    ref, cand, _ = _frames(1)
    cand[:, 0, 64:128, 0:64] += 20 * STEP  # red up by 20 levels in the lower-left quarter
    ((tone, (x, y, w, h)),) = tone_shifts(ref, cand, WINDOW)
    assert 18 < tone < 22
    assert x < 64 and y >= 64 - WINDOW // 2 and (w, h) == (WINDOW, WINDOW)


def test_banding_keeps_the_mean_but_loses_levels_where_it_is():
    ref, _, clean = _frames(2)
    banded = clean.copy()
    banded[0:64, 64:128] = (banded[0:64, 64:128] // 32) * 32 + 16  # 8 levels
    ((lost, (x, y, _w, _h)),) = levels_lost(ref, _tensor(banded), WINDOW)
    assert lost > 0.7 and x >= 64 and y < 64


def test_ignored_pixels_count_for_neither_guard():
    ref, cand, _ = _frames(3)
    cand[:, :, 0:32, 0:32] = -1  # blacked out under a mask
    ignored = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool)
    ignored[..., 0:32, 0:32] = True
    assert tone_shifts(ref, cand, WINDOW)[0][0] > 50
    assert tone_shifts(ref, cand, WINDOW, ignored)[0][0] < 2.0
    assert levels_lost(ref, cand, WINDOW, ignored)[0][0] < 0.15


def test_a_repeated_reference_is_counted_once_with_the_same_results():
    (ref_a, cand_a, _), (ref_b, cand_b, clean) = _frames(4), _frames(5)
    banded = _tensor((clean // 32) * 32 + 16)
    refs, cands = torch.cat([ref_a, ref_b, ref_a, ref_b]), torch.cat([cand_a, cand_b, cand_a, banded])
    repeated = levels_lost(refs, cands, WINDOW)
    assert levels_lost(torch.cat([ref_a, ref_b]), cands, WINDOW, ref_of=torch.tensor([0, 1, 0, 1])) == repeated
    assert repeated[3][0] > 0.7 > 0.15 > max(lost for lost, _box in repeated[:3])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("shape", "side", "stride"), [((2, 3, 128, 96), 32, 16), ((3, 3, 67, 45), 8, 4),
                                                         ((1, 1, 70, 33), 7, 3), ((2, 3, 9, 9), 1, 1)])
def test_window_means_are_avg_pool2d_in_either_layout(layout, shape, side, stride):
    """From block sums where side is a whole number of strides (rows and columns past the last window
    left out, as pooling leaves them), else pooling itself."""
    images = torch.rand(shape, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=layout)
    pooled = F.avg_pool2d(images, side, stride)
    assert window_means(images, side, stride).shape == pooled.shape
    assert torch.allclose(window_means(images, side, stride), pooled, atol=1e-6)
    assert torch.allclose(block_means(images[..., ::2, ::2], 4), F.avg_pool2d(images[..., ::2, ::2], 4), atol=1e-6)


def test_distinct_levels_are_counted_per_channel_and_window():
    """Window (0, 0) of channel 0 holds levels 0 and 255, of channels 1 and 2 one level; window (0, 1)
    holds four levels in every channel."""
    levels = torch.zeros(1, 3, 2, 4)
    levels[0, 0, 0, 0] = 255
    levels[:, :, :, 2:4] = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    counts = _distinct((levels / 127.5 - 1).contiguous(memory_format=torch.channels_last), 2)
    assert counts.tolist() == [[[2.0, 4.0], [1.0, 4.0], [1.0, 4.0]]]


def test_a_window_half_kept_has_a_share_of_exactly_one_half():
    """Tone drops windows less than half kept: summed blocks divided once, as pooling divides, never
    round an exact half to just under it (block means at 20 px strides did, for some masks)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        kept = torch.zeros(1, 1, 40, 40)
        kept.view(-1)[torch.randperm(1600, generator=generator)[:800]] = 1.0
        assert window_means(kept, 40, 20).item() == 0.5
