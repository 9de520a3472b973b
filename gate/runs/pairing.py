"""Pair a reference folder with a candidate folder by relative path, as task paths under the image root.

Workers read images only inside `Settings.image_root`, so the pairs are stored relative to it and
checked here, before anything is queued. Directory symlinks are not followed: a tree reached twice
(or reached from outside the root) would otherwise be compared twice."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".exr"})
SHOWN_UNMATCHED = 5


class PairingError(ValueError):
    """The folders cannot be paired; the message names the folder or files and the reason."""


@dataclass(frozen=True)
class Pairing:
    """Two folders' image files by relative path, as (ref, cand) paths under the image root: `pairs`
    to compare, `new` candidates without a reference (ref: where it would be), `missing` references
    without a candidate (cand: where it would be), `refused` pairs with a path that links out of the
    image root, by (ref, cand) -> the reason. Each list is sorted by the relative path."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    new: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    refused: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def every(self) -> list[tuple[str, str]]:
        """Every (ref, cand) above, in path order: a run's comparisons."""
        return sorted([*self.pairs, *self.new, *self.missing, *self.refused], key=lambda pair: pair[1])


def pair_folders(ref_dir: str | os.PathLike[str], cand_dir: str | os.PathLike[str], *,
                 image_root: str | os.PathLike[str]) -> Pairing:
    """Pair the image files of two folders under `image_root` by relative path (recursive); a folder
    that is missing, outside the root or without any image is an error (PairingError)."""
    root = Path(image_root).resolve()
    ref_base, cand_base = (_folder_under(root, folder) for folder in (ref_dir, cand_dir))
    (refs, ref_escaping), (cands, cand_escaping) = _image_files(ref_base, root), _image_files(cand_base, root)
    if not refs and not cands:
        raise PairingError(f"{ref_dir} and {cand_dir}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    ref_prefix, cand_prefix = ref_base.relative_to(root), cand_base.relative_to(root)
    pairing = Pairing()
    for name in sorted(refs | cands):
        pair = ((ref_prefix / name).as_posix(), (cand_prefix / name).as_posix())
        escaping = ref_escaping.get(name) or cand_escaping.get(name)
        if escaping is not None:
            pairing.refused[pair] = escaping
        elif name not in refs:
            pairing.new.append(pair)
        elif name not in cands:
            pairing.missing.append(pair)
        else:
            pairing.pairs.append(pair)
    return pairing


def pair_dirs(ref_dir: str | os.PathLike[str], cand_dir: str | os.PathLike[str], *,
              image_root: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(ref, cand) paths relative to `image_root`, one pair per image file present in both folders
    (recursive, sorted); a file present in only one folder, or linking out of the root, is an error
    (calibration learns from complete sets of good renders)."""
    pairing = pair_folders(ref_dir, cand_dir, image_root=image_root)
    if pairing.refused:
        raise PairingError(next(iter(pairing.refused.values())))
    root = Path(image_root).resolve()
    ref_prefix, cand_prefix = (Path(folder).resolve().relative_to(root).as_posix() for folder in (ref_dir, cand_dir))
    problems = [
        _unmatched([cand for _ref, cand in pairing.new], cand_prefix,
                   f"in {cand_dir} without a reference in {ref_dir}"),
        _unmatched([ref for ref, _cand in pairing.missing], ref_prefix,
                   f"in {ref_dir} without a candidate in {cand_dir}"),
    ]
    message = "; ".join(problem for problem in problems if problem)
    if message:
        raise PairingError(f"unmatched files: {message}")
    return pairing.pairs


def _folder_under(root: Path, folder: str | os.PathLike[str]) -> Path:
    resolved = Path(folder).resolve()
    if not resolved.is_dir():
        raise PairingError(f"{folder}: not a directory")
    if not resolved.is_relative_to(root):
        raise PairingError(f"{folder}: outside the image root {root} (LPIPS_GATE_IMAGE_ROOT)")
    return resolved


def _image_files(base: Path, root: Path) -> tuple[set[str], dict[str, str]]:
    """Relative posix paths of the image files under `base`, and of those among them that link out
    of `root` -> why they are refused. `base` is resolved and linked folders are not walked, so only
    a file that is itself a link can lead out: only links are resolved (a resolve per file was most
    of the time a submission took)."""
    found, escaping = set(), {}
    for folder, _subfolders, files in os.walk(base, onerror=_unreadable):  # linked folders are skipped
        prefix = Path(folder).relative_to(base).as_posix()
        for name in files:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                relative = name if prefix == "." else f"{prefix}/{name}"
                found.add(relative)
                path = os.path.join(folder, name)
                if os.path.islink(path) and not Path(path).resolve().is_relative_to(root):
                    escaping[relative] = f"{path}: links outside the image root {root}"
    return found, escaping


def _unreadable(error: OSError) -> None:
    raise PairingError(f"{error.filename}: cannot list ({error.strerror})") from error


def _unmatched(paths: list[str], prefix: str, where: str) -> str:
    """How many paths, and the first few relative to their folder (`prefix`, under the root)."""
    if not paths:
        return ""
    names = [path if prefix == "." else path.removeprefix(f"{prefix}/") for path in paths]
    shown = ", ".join(names[:SHOWN_UNMATCHED]) + (", ..." if len(names) > SHOWN_UNMATCHED else "")
    return f"{len(names)} {where}: {shown}"
