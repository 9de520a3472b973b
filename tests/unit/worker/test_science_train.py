"""Heads training on generated 2AFC data: better than the uncalibrated baseline on held-out triplets,
non-negative, saved with checksums, reloadable, and the reloaded metric gives the distances training predicted."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gate.settings import Settings
from worker.engine import build_model
from worker.images import load_image
from worker.perceptual import LPIPS, PRESETS
from worker.science import synthetic
from worker.science.bapps import find_subsets, fingerprint
from worker.science.evaluate import evaluate
from worker.science.train import Dist2Logit, agreement, distances, layer_means, train
from worker.science.trained import (
    VALID_NAMES,
    TrainedHeadsError,
    checksum,
    heads_path,
    save_trained,
    trained_heads,
    trained_metadata,
)

CPU = torch.device("cpu")
CHANNELS = PRESETS["alex"].channels


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """Real trunk weights, copied into a weights folder of this module's own."""
    folder = tmp_path_factory.mktemp("weights")
    shutil.copytree(Settings().weights_dir, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("heads"))
    return Settings(weights_dir=folder)


@pytest.fixture(scope="module")
def baseline(settings):
    return build_model(settings, net="alex", version="0.1", lin=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory, baseline):
    root = tmp_path_factory.mktemp("bapps")
    synthetic.write_2afc(root / "train", n=96, seed=11)
    synthetic.write_2afc(root / "val" / "mixed", n=64, seed=111)
    model, _ = baseline
    means = {name: layer_means(model, find_subsets(root / name, "2afc"), batch=16, max_pixels=10**7, min_size=31,
                               device=CPU) for name in ("train", "val")}
    return root, means


@pytest.fixture(scope="module")
def trained(data):
    _, means = data
    return train(means["train"], net="alex", epochs=50, lr=1e-2, seed=0)


def head_vectors(state):
    return [state[f"lin{i}.model.1.weight"].flatten() for i in range(len(CHANNELS))]


def test_ranking_network_is_the_papers():
    net = Dist2Logit()
    assert [tuple(p.shape) for p in net.parameters()] == [(32, 5), (32,), (32, 32), (32,), (1, 32), (1,)]
    assert [m.negative_slope for m in net.model if isinstance(m, nn.LeakyReLU)] == [0.2, 0.2]
    assert isinstance(net.model[-1], nn.Sigmoid)
    d0, d1 = torch.tensor([0.2, 1.0]), torch.tensor([0.4, 0.1])
    inputs = torch.tensor([[0.2, 0.4, -0.2, 0.2 / 0.5, 0.4 / 0.3], [1.0, 0.1, 0.9, 1.0 / 0.2, 0.1 / 1.1]])
    with torch.no_grad():
        out = net(d0, d1)
        assert torch.allclose(out, net.model(inputs).squeeze(1))
    assert out.shape == (2,) and ((out > 0) & (out < 1)).all()


def test_reduced_means_give_the_metrics_distances(settings, data):
    """The decomposition training relies on: heads on channel means == LPIPS with those heads."""
    root, means = data
    torch.manual_seed(0)
    state = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS)}
    trunk, _ = build_model(settings, net="alex", version="0.1")
    model = LPIPS("alex", "0.1", trunk_state=trunk.trunk.state_dict(), heads_state=state)
    val = find_subsets(root / "val", "2afc")[0]
    ref, p0 = (torch.stack([load_image(val.files[s][k], max_pixels=10**7) for s in val.stems]) for k in (0, 1))
    predicted = distances(head_vectors(state), means["val"].d0)
    assert torch.allclose(predicted, model(ref, p0), atol=1e-5, rtol=1e-5)


def test_training_beats_the_uncalibrated_baseline_on_held_out_triplets(data, trained):
    _, means = data
    ones = [torch.ones(c) for c in CHANNELS]
    assert trained.score_before == pytest.approx(agreement(ones, means["train"]))
    assert trained.score_after > trained.score_before + 0.05
    before, after = agreement(ones, means["val"]), agreement(head_vectors(trained.state), means["val"])
    assert after > before + 0.1, (before, after)
    assert trained.losses[-1] < trained.losses[0]


def test_heads_are_non_negative_and_shaped_for_lpips(trained):
    assert list(trained.state) == [f"lin{i}.model.1.weight" for i in range(5)]
    assert [tuple(v.shape) for v in trained.state.values()] == [(1, c, 1, 1) for c in CHANNELS]
    assert all((v >= 0).all() for v in trained.state.values())
    assert any((v == 0).any() for v in trained.state.values())  # the clamp was active


def test_training_is_deterministic_for_a_seed(data):
    _, means = data
    a = train(means["train"], net="alex", epochs=2, seed=5)
    b = train(means["train"], net="alex", epochs=2, seed=5)
    c = train(means["train"], net="alex", epochs=2, seed=6)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert not all(torch.equal(a.state[k], c.state[k]) for k in a.state)


def test_train_validates_its_arguments(data):
    _, means = data
    with pytest.raises(ValueError, match=r"need epochs >= 1, batch >= 1 and lr > 0 \(got 0, 50, 0.01\)"):
        train(means["train"], net="alex", epochs=0, lr=1e-2)
    with pytest.raises(ValueError, match=r"features have \[64, 192, 384, 256, 256\] channels, 'vgg' has"):
        train(means["train"], net="vgg", epochs=1)


def test_saved_heads_reload_and_change_distances_as_predicted(settings, data, trained):
    root, means = data
    info = {"weights_version": build_model(settings, net="alex", lin=False)[1],
            "data_fingerprint": fingerprint(root / "train", find_subsets(root / "train", "2afc"))}
    path = save_trained(settings.weights_dir, "alex", "synthetic", trained.state, info)
    assert path == settings.weights_dir / "heads" / "alex-synthetic.safetensors"
    metadata = trained_metadata(settings.weights_dir, "alex", "synthetic")
    assert metadata["sha256"] == checksum(trained.state)
    assert metadata["info"] == info and len(info["data_fingerprint"]) == 64
    reloaded = trained_heads(settings.weights_dir, "alex", "synthetic")
    assert all(torch.equal(reloaded[k], trained.state[k]) for k in trained.state)

    model, weights_version = build_model(settings, net="alex", version="synthetic")
    assert model.version == "synthetic" and model.is_lpips
    assert weights_version == f"{info['weights_version']}+heads:{metadata['sha256'][:12]}"
    val = find_subsets(root / "val", "2afc")[0]
    result = evaluate(model, [val], batch=16, max_pixels=10**7, min_size=31, device=CPU)
    assert result.overall == pytest.approx(agreement(head_vectors(trained.state), means["val"]), abs=1e-12)
    shipped, _ = build_model(settings, net="alex", version="0.1")
    assert evaluate(shipped, [val], batch=16, max_pixels=10**7, min_size=31, device=CPU).overall < result.overall


def test_an_existing_version_is_not_overwritten_by_accident(settings, trained):
    save_trained(settings.weights_dir, "alex", "twice", trained.state, {"weights_version": "x"})
    with pytest.raises(TrainedHeadsError, match="alex-twice.safetensors exists; pass --overwrite to replace it"):
        save_trained(settings.weights_dir, "alex", "twice", trained.state, {"weights_version": "x"})
    save_trained(settings.weights_dir, "alex", "twice", trained.state, {"weights_version": "y"}, overwrite=True)
    assert trained_metadata(settings.weights_dir, "alex", "twice")["info"] == {"weights_version": "y"}


def test_tampered_heads_are_refused(settings, trained):
    path = save_trained(settings.weights_dir, "alex", "tampered", trained.state, {"weights_version": "x"})
    state = load_file(str(path))
    state["lin0.model.1.weight"][0, 0, 0, 0] += 1
    metadata = trained_metadata(settings.weights_dir, "alex", "tampered")
    save_file(state, str(path), metadata={**metadata, "info": '{"weights_version": "x"}'})
    with pytest.raises(TrainedHeadsError, match=r"alex-tampered.safetensors: sha256 [0-9a-f]{12} does not match the "
                                                rf"stored {metadata['sha256'][:12]}"):
        trained_heads(settings.weights_dir, "alex", "tampered")


def test_heads_for_another_trunk_or_net_are_refused(settings, trained):
    save_trained(settings.weights_dir, "alex", "elsewhere", trained.state, {"weights_version": "0123456789ab"})
    with pytest.raises(TrainedHeadsError) as caught:
        build_model(settings, net="alex", version="elsewhere")
    trunk = build_model(settings, net="alex", lin=False)[1]
    assert str(caught.value) == (f"heads 'elsewhere' for 'alex' were trained on trunk weights '0123456789ab', "
                                 f"but the provisioned trunk is '{trunk}'")
    shutil.copy(heads_path(settings.weights_dir, "alex", "elsewhere"), heads_path(settings.weights_dir, "vgg", "moved"))
    with pytest.raises(TrainedHeadsError, match=r"vgg-moved.safetensors: heads are for net 'alex', not 'vgg'"):
        trained_heads(settings.weights_dir, "vgg", "moved")


def test_negative_heads_are_never_saved(settings, trained):
    state = {k: v.clone() for k, v in trained.state.items()}
    state["lin2.model.1.weight"][0, 3] = -0.5
    with pytest.raises(ValueError, match=r"heads have negative weights in \['lin2.model.1.weight'\]"):
        save_trained(settings.weights_dir, "alex", "negative", state, {})
    assert not heads_path(settings.weights_dir, "alex", "negative").exists()


@pytest.mark.parametrize("name, message", [
    ("0.1", "heads name '0.1' is a shipped LPIPS version; choose another name"),
    ("../up", "heads name '../up' is not valid: " + VALID_NAMES),
    ("", "heads name '' is not valid: " + VALID_NAMES),
])
def test_bad_names_are_refused(settings, name, message):
    with pytest.raises(TrainedHeadsError) as caught:
        heads_path(settings.weights_dir, "alex", name)
    assert str(caught.value) == message


def test_a_missing_version_says_how_to_make_one(settings):
    with pytest.raises(TrainedHeadsError) as caught:
        trained_heads(settings.weights_dir, "alex", "nothing")
    assert str(caught.value) == (f"no heads version 'nothing' for net 'alex' in {settings.weights_dir / 'heads'} "
                                 "(shipped versions: 0.0, 0.1; train one with `lpips-gate train-heads`)")
