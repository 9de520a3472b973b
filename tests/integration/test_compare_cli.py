"""`lpips-gate compare` end to end: real weights, the LPIPS example images, bad input, exit codes."""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from gate.cli import main
from gate.settings import Settings
from gate.vocabulary import SCORES
from tests.corpus import make_corpus, truncated_error
from worker.health import FIXTURES  # the LPIPS authors' examples, shipped with the worker


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fixtures")
    for name in ("ex_ref.png", "ex_p0.png", "ex_p1.png"):
        shutil.copy(FIXTURES / name, folder / name)
    (folder / "pairs.csv").write_text("ref,cand\nex_ref.png,ex_p0.png\nex_ref.png,ex_p1.png\n")
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gate.cli", *map(str, args)], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_fixtures_give_the_reference_distances_through_the_cli(fixtures, net):
    expected = json.loads((FIXTURES / "expected.json").read_text())
    done = run_cli("compare", "--pairs", fixtures / "pairs.csv", "--net", net, "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["ref"], r["cand"]) for r in rows] == [("ex_ref.png", "ex_p0.png"), ("ex_ref.png", "ex_p1.png")]
    for row, pair in zip(rows, expected["pairs"]):
        assert abs(row["distance"] - pair[net]) <= 1e-4
        assert row["net"] == net and row["version"] == "0.1"
        assert len(row["layers"]) == 5
        assert abs(sum(layer["distance"] for layer in row["layers"]) - row["distance"]) <= 1e-5
        assert set(row["layers"][0]["ref_stats"]) == {"sparsity", "mean", "std", "min", "max", "nonfinite",
                                                      "spatial_std", "dead"}
        assert "metric" not in row
        assert list(row["scores"]) == list(SCORES) and row["scores"]["mean"] == row["distance"]
        assert set(row["regions"]) >= {"region"}


def test_single_pair_prints_the_distance_and_writes_the_map(fixtures, tmp_path):
    out = tmp_path / "map.png"
    done = run_cli("compare", fixtures / "ex_ref.png", fixtures / "ex_p1.png", "--map", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.137566"
    with Image.open(out) as heatmap:
        assert heatmap.size == (64, 64) and heatmap.mode == "P"  # the report's palette and fixed scale


def test_non_default_options_are_marked_as_not_lpips(fixtures):
    result = CliRunner().invoke(main, ["compare", str(fixtures / "ex_ref.png"), str(fixtures / "ex_p0.png"),
                                       "--reduction", "max", "--json"], obj=Settings())
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["metric"] == "non-LPIPS (lin=True, normalise=l2, reduction=max)"
    assert row["distance"] > 0.721881  # the worst position is worse than the mean


BAD = {
    "not_image": "not an image file (expected PNG, JPEG, WebP, TIFF, BMP or OpenEXR)",
    "empty": "empty file",
    "bomb_png": "image is 50000x50000 (2500000000 pixels), more than max_pixels=64000000; "
                "refusing to decode a possible decompression bomb",
    "tiny_8x8": "image is 8x8; the network needs at least 31x31",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_naming_the_file_and_the_reason(corpus, case):
    result = CliRunner().invoke(main, ["compare", str(corpus["good_ref"]), str(corpus[case])], obj=Settings())
    assert result.exit_code == 2
    assert result.stderr == f"Error: {corpus[case]}: {BAD[case]}\n"


def test_non_finite_pixels_are_refused_in_the_reference_and_counted_in_the_candidate(corpus):
    refused = CliRunner().invoke(main, ["compare", str(corpus["nan_tiff"]), str(corpus["good_ref"])], obj=Settings())
    assert refused.exit_code == 2
    assert refused.stderr == f"Error: {corpus['nan_tiff']}: float image contains NaN or infinite pixel values\n"
    scored = CliRunner().invoke(main, ["compare", str(corpus["good_ref"]), str(corpus["nan_tiff"]), "--json"],
                                obj=Settings())
    assert scored.exit_code == 0, scored.output
    row = json.loads(scored.stdout)
    assert (row["scores"]["nonfinite"], row["regions"]["nonfinite"]) == (1.0, [7, 5, 1, 1])  # the pixel at row 5, col 7
    assert math.isfinite(row["distance"]) and row["scores"]["mean"] == row["distance"]


def test_a_truncated_image_exits_2_naming_the_file_and_the_reason(corpus):
    result = CliRunner().invoke(main, ["compare", str(corpus["good_ref"]), str(corpus["truncated_png"])],
                                obj=Settings())
    assert result.exit_code == 2
    assert re.fullmatch(rf"Error: {truncated_error(corpus['truncated_png']).pattern}\n", result.stderr)


def test_mismatched_sizes_exit_2_unless_resized(corpus):
    args = ["compare", str(corpus["mismatch_ref"]), str(corpus["mismatch_cand"])]
    refused = CliRunner().invoke(main, args, obj=Settings())
    assert refused.exit_code == 2
    assert "sizes differ; pass --resize ref|cand to resize" in refused.stderr
    resized = CliRunner().invoke(main, args + ["--resize", "cand"], obj=Settings())
    assert resized.exit_code == 0, resized.output
    assert float(resized.stdout) > 0


def test_pairs_go_on_past_a_bad_pair_and_exit_2(corpus, tmp_path):
    root = corpus["root"]
    csv = root / "pairs.csv"
    csv.write_text("ref,cand\ngood_ref.png,good_cand.png\ngood_ref.png,truncated.png\ngood_ref.png,gray.png\n")
    done = run_cli("compare", "--pairs", csv, "--json")
    assert done.returncode == 2
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [set(r) >= {"distance"} for r in rows] == [True, False, True]
    assert sorted(rows[1]) == ["cand", "error", "ref"]
    assert (rows[1]["ref"], rows[1]["cand"]) == ("good_ref.png", "truncated.png")
    assert truncated_error(root / "truncated.png").fullmatch(rows[1]["error"])


def test_missing_weights_exit_2_and_say_how_to_get_them(fixtures, tmp_path):
    settings = Settings(weights_dir=tmp_path / "empty")
    result = CliRunner().invoke(main, ["compare", str(fixtures / "ex_ref.png"), str(fixtures / "ex_p0.png"),
                                       "--net", "vgg"], obj=settings)
    assert result.exit_code == 2
    assert result.stderr == (f"Error: no weights for 'vgg' in {tmp_path / 'empty'}: run `lpips-gate weights fetch "
                             "--net vgg` or `lpips-gate weights import FILE --net vgg`\n")
