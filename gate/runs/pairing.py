"""Pair a reference folder with a candidate folder by relative path, as task paths under the image root.

Workers read images only inside `Settings.image_root`, so the pairs are stored relative to it and
checked here, before anything is queued. Directory symlinks are not followed: a tree reached twice
(or reached from outside the root) would otherwise be compared twice."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".exr"})
SHOWN_UNMATCHED = 5


class PairingError(ValueError):
    """The folders cannot be paired; the message names the folder or files and the reason."""


def pair_dirs(ref_dir: str | os.PathLike[str], cand_dir: str | os.PathLike[str], *,
              image_root: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(ref, cand) paths relative to `image_root`, one pair per image file present in both folders
    (recursive, sorted); a file present in only one folder is an error."""
    root = Path(image_root).resolve()
    ref_base, cand_base = (_folder_under(root, folder) for folder in (ref_dir, cand_dir))
    refs, cands = _image_files(ref_base, root), _image_files(cand_base, root)
    _check_matched(refs, cands, ref_dir, cand_dir)
    ref_prefix, cand_prefix = ref_base.relative_to(root), cand_base.relative_to(root)
    return [((ref_prefix / name).as_posix(), (cand_prefix / name).as_posix()) for name in sorted(refs)]


def _folder_under(root: Path, folder: str | os.PathLike[str]) -> Path:
    resolved = Path(folder).resolve()
    if not resolved.is_dir():
        raise PairingError(f"{folder}: not a directory")
    if not resolved.is_relative_to(root):
        raise PairingError(f"{folder}: outside the image root {root} (LPIPS_GATE_IMAGE_ROOT)")
    return resolved


def _image_files(base: Path, root: Path) -> set[str]:
    """Relative posix paths of the image files under `base`; a file symlink must stay inside `root`."""
    found = set()
    for folder, _subfolders, files in os.walk(base, onerror=_unreadable):  # linked folders are skipped
        for name in files:
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(folder, name)
                if not path.resolve().is_relative_to(root):
                    raise PairingError(f"{path}: links outside the image root {root}")
                found.add(path.relative_to(base).as_posix())
    return found


def _unreadable(error: OSError) -> None:
    raise PairingError(f"{error.filename}: cannot list ({error.strerror})") from error


def _check_matched(refs: set[str], cands: set[str], ref_dir: object, cand_dir: object) -> None:
    if not refs and not cands:
        raise PairingError(f"{ref_dir} and {cand_dir}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    problems = [
        _unmatched(sorted(cands - refs), f"in {cand_dir} without a reference in {ref_dir}"),
        _unmatched(sorted(refs - cands), f"in {ref_dir} without a candidate in {cand_dir}"),
    ]
    message = "; ".join(problem for problem in problems if problem)
    if message:
        raise PairingError(f"unmatched files: {message}")


def _unmatched(names: list[str], where: str) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:SHOWN_UNMATCHED]) + (", ..." if len(names) > SHOWN_UNMATCHED else "")
    return f"{len(names)} {where}: {shown}"
