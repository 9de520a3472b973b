"""BAPPS-format human-judgement data: discovery, validation, batched loading and a content fingerprint.

A 2AFC subset holds `ref/`, `p0/`, `p1/` (images) and `judge/` (one .npy per triplet: the fraction of
people who preferred p1); a JND subset holds `p0/`, `p1/` and `same/` (the fraction who saw no
difference). Files are matched by stem (`000123.png` with `000123.npy`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worker import images

IMAGES = {"2afc": ("ref", "p0", "p1"), "jnd": ("p0", "p1")}
JUDGEMENT = {"2afc": "judge", "jnd": "same"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}


class DataError(ValueError):
    """The data folder does not have the BAPPS layout or holds a bad file; says which and why."""


@dataclass(frozen=True)
class Subset:
    name: str
    root: Path
    kind: str
    files: dict[str, tuple[Path, ...]]  # stem -> image paths in IMAGES[kind] order, then the judgement

    @property
    def stems(self) -> list[str]:
        return sorted(self.files)

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class Batch:
    """Same-size items of one subset: images[k] is (N,3,H,W) for the k-th image folder."""

    stems: list[str]
    images: list[torch.Tensor]
    judgements: torch.Tensor  # (N,)


def folders(kind: str) -> tuple[str, ...]:
    if kind not in IMAGES:
        raise ValueError(f"unknown judgement kind {kind!r}; choose one of {sorted(IMAGES)}")
    return IMAGES[kind] + (JUDGEMENT[kind],)


def find_subsets(root: Path, kind: str) -> list[Subset]:
    """DIR itself when it has the layout, else each immediate subfolder that has it (sorted by name)."""
    wanted = folders(kind)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if _layout_state(root, wanted) == "complete":
        return [_read_subset(root, root.name, kind)]
    subsets = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        state = _layout_state(child, wanted)
        if state == "partial":
            missing = [f"{name}/" for name in wanted if not (child / name).is_dir()]
            raise DataError(f"{child}: incomplete {kind} subset, missing {', '.join(missing)}")
        if state == "complete":
            subsets.append(_read_subset(child, child.name, kind))
    if not subsets:
        layout = ", ".join(f"{name}/" for name in wanted)
        raise DataError(f"{root}: no {kind} data: expected {layout} in it or in its immediate subfolders")
    return subsets


def _layout_state(folder: Path, wanted: tuple[str, ...]) -> str:
    present = sum((folder / name).is_dir() for name in wanted)
    return "complete" if present == len(wanted) else "partial" if present else "none"


def _read_subset(folder: Path, name: str, kind: str) -> Subset:
    judgement = JUDGEMENT[kind]
    by_folder = {sub: _files_by_stem(folder / sub, IMAGE_SUFFIXES) for sub in IMAGES[kind]}
    by_folder[judgement] = _files_by_stem(folder / judgement, {".npy"})
    stems = set(by_folder[judgement])
    if not stems:
        raise DataError(f"{folder / judgement}: no .npy judgements")
    for sub, files in by_folder.items():
        for problem, found in (("lacks", stems - files.keys()), ("has no judgement for", files.keys() - stems)):
            if found:
                raise DataError(f"{folder / sub}: {problem} {_few(found)}")
    order = IMAGES[kind] + (judgement,)
    return Subset(name, folder, kind, {s: tuple(by_folder[sub][s] for sub in order) for s in stems})


def _files_by_stem(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in files:
            raise DataError(f"{folder}: two files for item {path.stem!r}: {files[path.stem].name}, {path.name}")
        files[path.stem] = path
    return files


def _few(stems: set[str]) -> str:
    shown = sorted(stems)[:3]
    more = f" and {len(stems) - 3} more" if len(stems) > 3 else ""
    return ", ".join(repr(s) for s in shown) + more


def read_judgement(path: Path) -> float:
    """One fraction in [0, 1] from a .npy file (BAPPS stores shape (1,) or ())."""
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    if values.size != 1 or not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{path}: expected one number, got an array of shape {values.shape} ({values.dtype})")
    value = float(values.reshape(()))
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise DataError(f"{path}: judgement {value} is not a fraction in [0, 1]")
    return value


def batches(subset: Subset, *, size: int, max_pixels: int, min_size: int,
            pool: ThreadPoolExecutor) -> Iterator[Batch]:
    """Items in stem order, `size` at a time, split further by image size; decoding runs in `pool`."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    stems = subset.stems
    for start in range(0, len(stems), size):
        chunk = stems[start:start + size]
        loaded = list(pool.map(lambda s: _load_images(subset.files[s], max_pixels, min_size), chunk))
        # Here, not in the pool: np.load parses headers with `ast`, which is not thread-safe on CPython 3.11.7.
        judgements = [read_judgement(subset.files[s][-1]) for s in chunk]
        by_shape: dict[tuple, list[int]] = {}
        for i, tensors in enumerate(loaded):
            by_shape.setdefault(tuple(tensors[0].shape), []).append(i)
        for rows in by_shape.values():
            yield Batch([chunk[i] for i in rows],
                        [torch.stack([loaded[i][k] for i in rows]) for k in range(len(loaded[0]))],
                        torch.tensor([judgements[i] for i in rows], dtype=torch.float64))


def _load_images(paths: tuple[Path, ...], max_pixels: int, min_size: int) -> list[torch.Tensor]:
    try:
        tensors = [images.load_image(p, max_pixels=max_pixels, min_size=min_size) for p in paths[:-1]]
    except images.ImageError as exc:
        raise DataError(str(exc)) from None
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        sizes = ", ".join(f"{p.parent.name}/{p.name} {t.shape[-1]}x{t.shape[-2]}" for p, t in zip(paths, tensors))
        raise DataError(f"{paths[0].parent.parent}: item {paths[0].stem!r} has images of different sizes ({sizes})")
    return tensors


def fingerprint(root: Path, subsets: list[Subset]) -> str:
    """sha256 over the sorted relative paths of every file used and each file's own sha256."""
    digest = hashlib.sha256()
    paths = sorted(p for s in subsets for item in s.files.values() for p in item)
    for path in paths:
        with open(path, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        digest.update(f"{path.relative_to(root).as_posix()}\0{content}\n".encode())
    return digest.hexdigest()
