"""BAPPS layout discovery, judgement files, the 2AFC and JND formulas, and evaluation against direct distances."""

from __future__ import annotations

import shutil

import lpips
import numpy as np
import pytest
import torch

from gate.settings import Settings
from worker.engine import build_model
from worker.images import SUPPORTED, load_image
from worker.science import synthetic
from worker.science.bapps import DataError, find_subsets, fingerprint, read_judgement
from worker.science.evaluate import average_precision, evaluate, two_afc

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def two_afc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bapps")
    synthetic.write_2afc(root / "mixed", n=12, seed=1)
    synthetic.write_2afc(root / "blur", n=8, seed=2, kinds=("blur",))
    (root / "unrelated").mkdir()  # a folder without any of the layout is ignored
    return root


@pytest.fixture(scope="module")
def alex():
    model, _ = build_model(Settings(), net="alex", version="0.1")
    return model


def test_two_afc_scores_each_triplet_by_agreement_with_people():
    d0 = np.array([0.1, 0.5, 0.3, 0.2, 0.4])
    d1 = np.array([0.2, 0.4, 0.3, 0.1, 0.9])
    judge = np.array([0.0, 1.0, 0.7, 0.2, 0.6])
    assert two_afc(d0, d1, judge).tolist() == pytest.approx([1.0, 1.0, 0.5, 0.2, 0.4])


def test_average_precision_known_value():
    # ranked: same, diff, same, diff -> precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1
    ap = average_precision(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 0.0, 1.0, 0.0]))
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_average_precision_matches_the_lpips_repository():
    rng = np.random.default_rng(0)
    distances, same = rng.random(200), rng.choice([0.0, 0.25, 0.5, 1.0], 200)
    order = np.argsort(distances)
    tp = np.cumsum(same[order])
    fp = np.cumsum(1 - same[order])
    expected = lpips.voc_ap(tp / same.sum(), tp / (tp + fp))
    assert average_precision(distances, same) == pytest.approx(expected, abs=1e-12)
    assert 0.3 < expected < 0.7  # random distances: the formula is exercised, not saturated


def test_average_precision_needs_a_same_item():
    with pytest.raises(ValueError, match="needs at least one item judged the same"):
        average_precision(np.array([0.1, 0.2]), np.array([0.0, 0.0]))


def test_subsets_are_the_subfolders_with_the_layout(two_afc_root):
    subsets = find_subsets(two_afc_root, "2afc")
    assert [(s.name, len(s)) for s in subsets] == [("blur", 8), ("mixed", 12)]
    first = subsets[1].files["000000"]
    assert [p.relative_to(two_afc_root).as_posix() for p in first] == [
        "mixed/ref/000000.png", "mixed/p0/000000.png", "mixed/p1/000000.png", "mixed/judge/000000.npy"]


def test_the_folder_itself_is_a_subset_when_it_has_the_layout(two_afc_root):
    assert [(s.name, len(s)) for s in find_subsets(two_afc_root / "blur", "2afc")] == [("blur", 8)]


def test_jnd_layout(tmp_path):
    synthetic.write_jnd(tmp_path / "jnd", n=8, seed=3)
    [subset] = find_subsets(tmp_path, "jnd")
    assert subset.name == "jnd" and len(subset) == 8
    assert [read_judgement(subset.files[s][-1]) for s in subset.stems] == list(synthetic.JND_SAME) * 2


@pytest.mark.parametrize("breakage, message", [
    (lambda r: shutil.rmtree(r / "s" / "judge"), "{r}/s: incomplete 2afc subset, missing judge/"),
    (lambda r: (r / "s" / "p1" / "000001.png").unlink(), "{r}/s/p1: lacks '000001'"),
    (lambda r: (r / "s" / "judge" / "000002.npy").unlink(), "{r}/s/ref: has no judgement for '000002'"),
    (lambda r: shutil.copy(r / "s" / "p0" / "000000.png", r / "s" / "p0" / "000000.jpg"),
     "{r}/s/p0: two files for item '000000': 000000.jpg, 000000.png"),
    (lambda r: [p.unlink() for p in (r / "s" / "judge").iterdir()], "{r}/s/judge: no .npy judgements"),
])
def test_broken_layouts_are_named(tmp_path, breakage, message):
    synthetic.write_2afc(tmp_path / "s", n=3, seed=0)
    breakage(tmp_path)
    with pytest.raises(DataError) as caught:
        find_subsets(tmp_path, "2afc")
    assert str(caught.value) == message.format(r=tmp_path)


def test_a_folder_without_data_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as caught:
        find_subsets(tmp_path, "jnd")
    expected = f"{tmp_path}: no jnd data: expected p0/, p1/, same/ in it or in its immediate subfolders"
    assert str(caught.value) == expected
    with pytest.raises(DataError, match="not a folder"):
        find_subsets(tmp_path / "missing", "2afc")


@pytest.mark.parametrize("content, reason", [
    (np.array([1.5]), "judgement 1.5 is not a fraction in [0, 1]"),
    (np.array([np.nan]), "judgement nan is not a fraction in [0, 1]"),
    (np.array([0.1, 0.2]), "expected one number, got an array of shape (2,) (float64)"),
    (np.array(["a"]), "expected one number, got an array of shape (1,) (<U1)"),
])
def test_bad_judgements_are_named(tmp_path, content, reason):
    path = tmp_path / "j.npy"
    np.save(path, content)
    with pytest.raises(DataError) as caught:
        read_judgement(path)
    assert str(caught.value) == f"{path}: {reason}"


def test_a_non_npy_judgement_is_refused(tmp_path):
    path = tmp_path / "j.npy"
    path.write_text("0.5")
    with pytest.raises(DataError, match=r"j\.npy: not a readable \.npy array"):
        read_judgement(path)


def test_scalar_and_shape_one_judgements_are_read(tmp_path):
    np.save(tmp_path / "a.npy", np.float32(0.25))
    np.save(tmp_path / "b.npy", np.array([0.75], dtype=np.float32))
    assert (read_judgement(tmp_path / "a.npy"), read_judgement(tmp_path / "b.npy")) == (0.25, 0.75)


def test_fingerprint_follows_content_and_names_not_location(two_afc_root, tmp_path):
    original = fingerprint(two_afc_root, find_subsets(two_afc_root, "2afc"))
    copy = tmp_path / "copy"
    shutil.copytree(two_afc_root, copy)
    assert fingerprint(copy, find_subsets(copy, "2afc")) == original
    np.save(copy / "blur" / "judge" / "000003.npy", np.array([0.5], dtype=np.float32))
    changed = fingerprint(copy, find_subsets(copy, "2afc"))
    (copy / "blur").rename(copy / "blurred")
    renamed = fingerprint(copy, find_subsets(copy, "2afc"))
    assert len({original, changed, renamed}) == 3


def test_evaluation_equals_the_formula_on_direct_distances(two_afc_root, alex):
    subsets = find_subsets(two_afc_root, "2afc")
    result = evaluate(alex, subsets, batch=5, max_pixels=10**7, min_size=31, device=CPU)
    pooled = []
    for subset in subsets:
        def load(path):
            return load_image(path, max_pixels=10**7)

        ref, p0, p1 = (torch.stack([load(subset.files[s][k]) for s in subset.stems]) for k in range(3))
        judge = np.array([read_judgement(subset.files[s][3]) for s in subset.stems])
        scores = two_afc(alex(ref, p0).numpy(), alex(ref, p1).numpy(), judge)
        assert result.subsets[subset.name] == pytest.approx(scores.mean(), abs=1e-12)
        pooled.extend(scores)
    assert result.overall == pytest.approx(np.mean(pooled), abs=1e-12)
    assert (result.n, result.counts) == (20, {"blur": 8, "mixed": 12})
    assert 0.5 < result.overall < 1.0


def test_images_of_different_sizes_in_one_item_are_refused(tmp_path, alex):
    synthetic.write_2afc(tmp_path / "s", n=2, seed=0)
    synthetic.write_png(tmp_path / "s" / "p1" / "000001.png", np.zeros((40, 48, 3)))
    with pytest.raises(DataError) as caught:
        evaluate(alex, find_subsets(tmp_path, "2afc"), batch=4, max_pixels=10**7, min_size=31, device=CPU)
    assert str(caught.value) == (f"{tmp_path}/s: item '000001' has images of different sizes "
                                 "(ref/000001.png 64x64, p0/000001.png 64x64, p1/000001.png 48x40)")


def test_a_bad_image_names_the_file(tmp_path, alex):
    synthetic.write_2afc(tmp_path / "s", n=2, seed=0)
    (tmp_path / "s" / "ref" / "000000.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as caught:
        evaluate(alex, find_subsets(tmp_path, "2afc"), batch=4, max_pixels=10**7, min_size=31, device=CPU)
    assert str(caught.value) == f"{tmp_path}/s/ref/000000.png: not an image file (expected {SUPPORTED})"


def test_items_of_different_sizes_are_batched_apart(tmp_path, alex):
    synthetic.write_2afc(tmp_path / "s", n=4, seed=5)
    rng = np.random.default_rng(0)
    for folder in ("ref", "p0", "p1"):
        synthetic.write_png(tmp_path / "s" / folder / "000001.png", rng.random((40, 48, 3)))
    [subset] = find_subsets(tmp_path, "2afc")
    result = evaluate(alex, [subset], batch=4, max_pixels=10**7, min_size=31, device=CPU)
    scores = []
    for stem in subset.stems:
        ref, p0, p1 = (load_image(path, max_pixels=10**7)[None] for path in subset.files[stem][:3])
        judge = np.array([read_judgement(subset.files[stem][3])])
        scores.extend(two_afc(alex(ref, p0).numpy(), alex(ref, p1).numpy(), judge))
    assert result.overall == pytest.approx(np.mean(scores), abs=1e-12)
    assert result.n == 4
