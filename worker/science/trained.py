"""Trained heads versions: safetensors in `{weights_dir}/heads/{net}-{name}.safetensors`, checked on load.

Metadata holds the tensors' sha256 (verified on every load), the trunk weights version the heads
were trained on (heads are meaningless on another trunk), the training data fingerprint and the
training settings and scores."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from worker.perceptual import PRESETS
from worker.perceptual.heads import Heads, shipped_heads

SHIPPED_VERSIONS = ("0.0", "0.1")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
VALID_NAMES = "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class TrainedHeadsError(ValueError):
    """A trained heads version is missing, tampered with or does not fit this net or trunk."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise TrainedHeadsError(
            f"heads name {name!r} is not valid: {VALID_NAMES}")
    if name in SHIPPED_VERSIONS:
        raise TrainedHeadsError(f"heads name {name!r} is a shipped LPIPS version; choose another name")
    return name


def heads_path(weights_dir: Path, net: str, name: str) -> Path:
    return Path(weights_dir) / "heads" / f"{net}-{check_name(name)}.safetensors"


def checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over key, dtype, shape and bytes of every tensor, in key order: independent of file layout."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def save_trained(weights_dir: Path, net: str, name: str, state: dict[str, torch.Tensor], info: dict, *,
                 overwrite: bool = False) -> Path:
    """Write a heads version after the same checks a load makes; `info` is stored as JSON metadata."""
    path = heads_path(weights_dir, net, name)
    if path.exists() and not overwrite:
        raise TrainedHeadsError(f"{path} exists; pass --overwrite to replace it")
    Heads(PRESETS[net].channels).load_checked(state)
    state = {k: v.detach().cpu().float().contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"net": net, "name": name, "sha256": checksum(state), "info": json.dumps(info, sort_keys=True)}
    tmp = path.with_suffix(".partial")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def trained_metadata(weights_dir: Path, net: str, name: str) -> dict:
    """The stored metadata, with `info` decoded."""
    path = _existing(weights_dir, net, name)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise TrainedHeadsError(f"{path}: not a readable safetensors file ({exc})") from None
    if not {"net", "name", "sha256", "info"} <= metadata.keys():
        raise TrainedHeadsError(f"{path}: metadata lacks net/name/sha256/info: not a trained heads file")
    if metadata["net"] != net:
        raise TrainedHeadsError(f"{path}: heads are for net {metadata['net']!r}, not {net!r}")
    return {**metadata, "info": json.loads(metadata["info"])}


def trained_heads(weights_dir: Path, net: str, name: str) -> dict[str, torch.Tensor]:
    """The heads tensors of a trained version, after checking their sha256 and shapes."""
    metadata = trained_metadata(weights_dir, net, name)
    path = heads_path(weights_dir, net, name)
    state = load_file(str(path))
    digest = checksum(state)
    if digest != metadata["sha256"]:
        raise TrainedHeadsError(f"{path}: sha256 {digest[:12]} does not match the stored {metadata['sha256'][:12]}")
    try:
        Heads(PRESETS[net].channels).load_checked(state)
    except (RuntimeError, ValueError) as exc:
        raise TrainedHeadsError(f"{path}: {exc}") from None
    return state


def _existing(weights_dir: Path, net: str, name: str) -> Path:
    path = heads_path(weights_dir, net, name)
    if not path.exists():
        raise TrainedHeadsError(
            f"no heads version {name!r} for net {net!r} in {path.parent} "
            f"(shipped versions: {', '.join(SHIPPED_VERSIONS)}; train one with `lpips-gate train-heads`)")
    return path


def resolve_heads(weights_dir: Path, net: str, version: str, trunk_version: str) -> tuple[dict, str]:
    """Heads for a shipped version or a trained name, and the id that marks results made with them."""
    if version in SHIPPED_VERSIONS:
        return shipped_heads(net, version), ""
    metadata = trained_metadata(weights_dir, net, version)
    trained_on = metadata["info"].get("weights_version")
    if trained_on != trunk_version:
        raise TrainedHeadsError(
            f"heads {version!r} for {net!r} were trained on trunk weights {trained_on!r}, "
            f"but the provisioned trunk is {trunk_version!r}")
    return trained_heads(weights_dir, net, version), f"+heads:{metadata['sha256'][:12]}"
