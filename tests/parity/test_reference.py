"""Parity with the reference `lpips==0.1.4` package on shared backbone weights: |d - d_ref| <= 1e-5."""

import threading

import lpips
import pytest
import torch

from worker.perceptual import LPIPS

SIZES = [(64, 64), (67, 93), (97, 50)]


def reference_and_ours(net, version, lin, spatial=False):
    torch.manual_seed(1234)
    ref = lpips.LPIPS(pnet_rand=True, net=net, version=version, lpips=lin, spatial=spatial, verbose=False)
    trunk_state = {}
    for key, tensor in ref.net.state_dict().items():
        _slice, index, rest = key.split(".", 2)
        trunk_state[f"features.{index}.{rest}"] = tensor
    return ref, LPIPS(net, version, trunk_state=trunk_state, lin=lin)


def image_pairs(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, *size, generator=g) * 2 - 1
    noisy = (base + 0.3 * torch.randn(n, 3, *size, generator=g)).clamp(-1, 1)
    return base, noisy


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
@pytest.mark.parametrize("version", ["0.0", "0.1"])
@pytest.mark.parametrize("lin", [True, False], ids=["lin", "no-lin"])
def test_distance_matches_reference(net, version, lin):
    ref, ours = reference_and_ours(net, version, lin)
    for i, size in enumerate(SIZES):
        x0, x1 = image_pairs(2, size, seed=i)
        expected = ref(x0, x1).flatten()
        got = ours(x0, x1)
        assert got.shape == (2,)
        assert torch.all(got > 0)
        assert (got - expected).abs().max().item() <= 1e-5, (size, got, expected)


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_spatial_map_matches_reference(net):
    ref, ours = reference_and_ours(net, "0.1", True, spatial=True)
    x0, x1 = image_pairs(2, (67, 93), seed=7)
    expected = ref(x0, x1)
    result = ours.run(x0, x1, with_map=True)
    assert result.map.shape == (2, 1, 67, 93)
    assert (result.map - expected).abs().max().item() <= 1e-5


def test_per_layer_contributions_sum_to_distance():
    ref, ours = reference_and_ours("alex", "0.1", True)
    x0, x1 = image_pairs(3, (64, 64), seed=3)
    _, per_layer = ref(x0, x1, retPerLayer=True)
    result = ours.run(x0, x1)
    expected = torch.cat([p.flatten(1) for p in per_layer], dim=1)
    assert result.layers.shape == (3, 5)
    assert (result.layers - expected).abs().max().item() <= 1e-6
    assert torch.allclose(result.layers.sum(dim=1), result.distance)


def test_two_models_in_two_threads_match_one_at_a_time():
    _, alex = reference_and_ours("alex", "0.1", True)
    _, vgg = reference_and_ours("vgg", "0.1", True)
    x0, x1 = image_pairs(2, (64, 64), seed=11)
    alone = {"alex": alex(x0, x1), "vgg": vgg(x0, x1)}
    together = {}

    def work(name, model):
        for _ in range(5):
            together.setdefault(name, []).append(model(x0, x1))

    threads = [threading.Thread(target=work, args=item) for item in (("alex", alex), ("vgg", vgg))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in alone:
        assert all(torch.equal(d, alone[name]) for d in together[name])
    for model in (alex, vgg):
        assert all(not m._forward_hooks for m in model.modules())


def test_output_is_never_zero_dimensional():
    _, ours = reference_and_ours("alex", "0.1", True)
    x0, x1 = image_pairs(1, (64, 64), seed=5)
    assert ours(x0, x1).shape == (1,)


def test_model_stays_frozen_in_eval_mode():
    _, ours = reference_and_ours("alex", "0.1", True)
    ours.train()
    assert not ours.training and not any(m.training for m in ours.modules())
    assert not any(p.requires_grad for p in ours.parameters())
