"""ONNX export: the whole metric in onnxruntime matches PyTorch on the LPIPS example images, at two sizes
and two batch sizes from one exported file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from gate.settings import Settings
from worker.engine import build_model
from worker.health import FIXTURES  # the LPIPS authors' examples, shipped with the worker
from worker.images import load_image
from worker.perceptual import LPIPS
from worker.science.export import MetricGraph, export_onnx


@pytest.fixture(scope="module")
def alex():
    model, _ = build_model(Settings(), net="alex", version="0.1")
    return model


@pytest.fixture(scope="module")
def session(alex, tmp_path_factory):
    path = export_onnx(alex, tmp_path_factory.mktemp("onnx") / "alex.onnx", metadata={"net": "alex"})
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]), path


@pytest.fixture(scope="module")
def fixtures():
    return {name: load_image(FIXTURES / f"ex_{name}.png", max_pixels=10**7) for name in ("ref", "p0", "p1")}


def run(session, in0: torch.Tensor, in1: torch.Tensor) -> np.ndarray:
    return session.run(["distance"], {"in0": in0.numpy(), "in1": in1.numpy()})[0]


def test_graph_has_dynamic_batch_and_size(session):
    _, path = session
    model = onnx.load(str(path))
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert [i.name for i in model.graph.input] == ["in0", "in1"]
    assert dims == [["batch", 3, "height", "width"]] * 2
    assert [o.name for o in model.graph.output] == ["distance"]
    assert {p.key: p.value for p in model.metadata_props} == {"net": "alex"}


def test_fixtures_match_pytorch_and_the_reference_values(session, alex, fixtures):
    ort, _ = session
    ref = torch.stack([fixtures["ref"], fixtures["ref"]])
    cand = torch.stack([fixtures["p0"], fixtures["p1"]])
    got = run(ort, ref, cand)
    assert got.shape == (2,)
    assert np.abs(got - alex(ref, cand).numpy()).max() <= 1e-4
    assert np.abs(got - np.array([0.721881, 0.137566])).max() <= 1e-4  # worker/golden/expected.json


def test_a_second_size_and_batch_from_the_same_file(session, alex, fixtures):
    ort, _ = session
    ref, cand = fixtures["ref"][None, :, 5:52, 3:60], fixtures["p1"][None, :, 5:52, 3:60]  # 47x57, batch 1
    got = run(ort, ref, cand)
    assert got.shape == (1,)
    assert np.abs(got - alex(ref, cand).numpy()).max() <= 1e-4
    upscaled = [
        torch.nn.functional.interpolate(fixtures[k][None], size=(96, 80), mode="bilinear") for k in ("ref", "p0")
    ]
    big = run(ort, *(torch.cat([u] * 3) for u in upscaled))
    assert big.shape == (3,)
    assert np.abs(big - alex(*(torch.cat([u] * 3) for u in upscaled)).numpy()).max() <= 1e-4


def test_version_0_0_keeps_unscaled_inputs(tmp_path, fixtures):
    trunk, _ = build_model(Settings(), net="alex", version="0.1", lin=False)
    model = LPIPS("alex", "0.0", trunk_state=trunk.trunk.state_dict())
    graph = MetricGraph(model)
    ref, cand = fixtures["ref"][None], fixtures["p0"][None]
    with torch.no_grad():
        assert torch.allclose(graph(ref, cand), model(ref, cand), atol=1e-6)
    assert not graph.scale_inputs


def test_only_lpips_itself_is_exported(alex):
    trunk_state = alex.trunk.state_dict()
    for options in ({"lin": False}, {"reduction": "max"}, {"normalise": "instance"}):
        with pytest.raises(ValueError, match="only LPIPS itself .* can be exported"):
            MetricGraph(LPIPS("alex", "0.1", trunk_state=trunk_state, **options))
