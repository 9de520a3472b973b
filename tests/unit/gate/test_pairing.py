"""Folder pairing: relative paths under the image root, recursive, every file matched exactly once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gate.runs.pairing import PairingError, pair_dirs, pair_folders


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "images"


def test_pairs_image_files_by_relative_path_sorted_and_relative_to_the_root(root: Path) -> None:
    names = ("z.png", "a.JPG", "b/c.jpeg", "b/d/e.WebP", "f.tif", "g.tiff", "h.bmp", "i.exr")
    _touch(root / "renders/ref", *names, "notes.txt", "a.json", "noext")
    _touch(root / "renders/new", *names, "other.txt")
    pairs = pair_dirs(root / "renders/ref", root / "renders/new", image_root=root)
    in_order = ("a.JPG", "b/c.jpeg", "b/d/e.WebP", "f.tif", "g.tiff", "h.bmp", "i.exr", "z.png")
    assert pairs == [(f"renders/ref/{name}", f"renders/new/{name}") for name in in_order]


def test_a_folder_may_be_the_root_itself_and_paths_are_normalised(root: Path) -> None:
    _touch(root, "a.png", "b/c.png")
    assert pair_dirs(root / "b/..", root, image_root=root) == [("a.png", "a.png"), ("b/c.png", "b/c.png")]


def test_relative_folders_resolve_from_the_working_directory(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _touch(root / "ref", "a.png")
    _touch(root / "cand", "a.png")
    monkeypatch.chdir(root / "ref")
    assert pair_dirs(".", "../cand", image_root="..") == [("ref/a.png", "cand/a.png")]


def test_unmatched_files_on_both_sides_are_listed(root: Path) -> None:
    _touch(root / "ref", "a.png", "only_ref.png")
    _touch(root / "cand", "a.png", "b/only_cand.png", "c.png")
    with pytest.raises(PairingError) as caught:
        pair_dirs(root / "ref", root / "cand", image_root=root)
    ref, cand = root / "ref", root / "cand"
    assert str(caught.value) == (
        f"unmatched files: 2 in {cand} without a reference in {ref}: b/only_cand.png, c.png; "
        f"1 in {ref} without a candidate in {cand}: only_ref.png"
    )


def test_unmatched_listing_stops_after_five(root: Path) -> None:
    _touch(root / "ref", "a.png")
    _touch(root / "cand", "a.png", *(f"extra{i}.png" for i in range(7)))
    with pytest.raises(PairingError, match=r": 7 in .* extra0.png, extra1.png, extra2.png, extra3.png, "
                                           r"extra4.png, \.\.\.$"):
        pair_dirs(root / "ref", root / "cand", image_root=root)


def test_a_folder_outside_the_image_root_is_named(root: Path, tmp_path: Path) -> None:
    _touch(root / "ref", "a.png")
    _touch(tmp_path / "elsewhere", "a.png")
    with pytest.raises(PairingError) as caught:
        pair_dirs(root / "ref", tmp_path / "elsewhere", image_root=root)
    assert str(caught.value) == f"{tmp_path / 'elsewhere'}: outside the image root {root} (LPIPS_GATE_IMAGE_ROOT)"


def test_dotdot_cannot_leave_the_root(root: Path) -> None:
    _touch(root / "ref", "a.png")
    _touch(root.parent / "out", "a.png")
    with pytest.raises(PairingError, match="outside the image root"):
        pair_dirs(root / "ref", root / "ref/../../out", image_root=root)


def test_a_missing_folder_or_a_file_is_not_a_directory(root: Path) -> None:
    _touch(root / "ref", "a.png")
    with pytest.raises(PairingError) as caught:
        pair_dirs(root / "ref", root / "nope", image_root=root)
    assert str(caught.value) == f"{root / 'nope'}: not a directory"
    with pytest.raises(PairingError, match=r"a\.png: not a directory$"):
        pair_dirs(root / "ref/a.png", root / "ref", image_root=root)


def test_folders_without_images_are_refused(root: Path) -> None:
    _touch(root / "ref", "readme.txt")
    (root / "cand").mkdir()
    with pytest.raises(PairingError) as caught:
        pair_dirs(root / "ref", root / "cand", image_root=root)
    assert str(caught.value) == (
        f"{root / 'ref'} and {root / 'cand'}: no image files (.bmp, .exr, .jpeg, .jpg, .png, .tif, .tiff, .webp)"
    )


def test_a_linked_folder_is_not_followed_so_each_file_is_paired_once(root: Path) -> None:
    for side in ("ref", "cand"):
        _touch(root / side, "v2/a.png", "v2/b.png")
        os.symlink(root / side / "v2", root / side / "latest")
    pairs = pair_dirs(root / "ref", root / "cand", image_root=root)
    assert pairs == [("ref/v2/a.png", "cand/v2/a.png"), ("ref/v2/b.png", "cand/v2/b.png")]


def test_a_linked_file_inside_the_root_keeps_its_own_name(root: Path) -> None:
    _touch(root / "ref", "link.png", "real/a.png")
    _touch(root / "cand", "real/a.png")
    os.symlink(root / "cand/real/a.png", root / "cand/link.png")
    assert pair_dirs(root / "ref", root / "cand", image_root=root) == [
        ("ref/link.png", "cand/link.png"), ("ref/real/a.png", "cand/real/a.png"),
    ]


def test_a_linked_file_pointing_outside_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    _touch(tmp_path / "secret", "key.png")
    _touch(root / "ref", "key.png")
    (root / "cand").mkdir()
    os.symlink(tmp_path / "secret/key.png", root / "cand/key.png")
    with pytest.raises(PairingError) as caught:
        pair_dirs(root / "ref", root / "cand", image_root=root)
    assert str(caught.value) == f"{root / 'cand/key.png'}: links outside the image root {root}"


def test_pair_folders_keeps_new_missing_and_escaping_frames_as_pairs(root: Path, tmp_path: Path) -> None:
    _touch(tmp_path / "secret", "key.png")
    _touch(root / "renders/ref", "a.png", "gone.png", "key.png", "shots/b.png")
    _touch(root / "renders/out", "a.png", "added.png", "shots/b.png")
    os.symlink(tmp_path / "secret/key.png", root / "renders/out/key.png")
    pairing = pair_folders(root / "renders/ref", root / "renders/out", image_root=root)
    assert pairing.pairs == [("renders/ref/a.png", "renders/out/a.png"),
                             ("renders/ref/shots/b.png", "renders/out/shots/b.png")]
    assert pairing.new == [("renders/ref/added.png", "renders/out/added.png")]
    assert pairing.missing == [("renders/ref/gone.png", "renders/out/gone.png")]
    assert pairing.refused == {("renders/ref/key.png", "renders/out/key.png"):
                               f"{root / 'renders/out/key.png'}: links outside the image root {root}"}
    assert [cand for _ref, cand in pairing.every] == [
        "renders/out/a.png", "renders/out/added.png", "renders/out/gone.png", "renders/out/key.png",
        "renders/out/shots/b.png",
    ]
