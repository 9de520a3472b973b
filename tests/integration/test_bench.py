"""The benchmark runs in CI in its short mode: it must work and agree with the reference, not be fast."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# AlexNet's five convolutions on a 64px image, 2 x outputs x in-channels x kernel area each:
# (side, out, in, kernel) = (15, 64, 3, 11), (7, 192, 64, 5), then 3x3 sides of 384, 256, 256 channels
ALEX_64PX_GFLOP = sum(2 * side**2 * out * inp * k**2 for side, out, inp, k in (
    (15, 64, 3, 11), (7, 192, 64, 5), (3, 384, 192, 3), (3, 256, 384, 3), (3, 256, 256, 3))) / 1e9


def quick_bench(script: str, tmp_path: Path, *options: str) -> tuple[list[str], Any]:
    """Run bench/`script` in its quick mode: the lines it printed and the JSON it wrote."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", *options, "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines(), json.loads(out.read_text())


def test_quick_benchmark_reports_every_figure(tmp_path):
    """One command: (a), (b), bf16 and (c), the service end to end on the local PostgreSQL and Redis."""
    lines, result = quick_bench("compare.py", tmp_path, "--nets", "alex")
    (row,) = result["engine"]
    assert (row["net"], row["size"], row["pairs"], row["device"]) == ("alex", 64, 4, "cpu")
    for key in ("reference_pairs_s", "ours_pairs_s", "bf16_pairs_s", "one_ref_reference_pairs_s",
                "one_ref_ours_pairs_s"):
        assert row[key] > 0, key
    assert row["max_abs_diff_vs_reference"] <= 1e-5
    assert row["bf16_max_abs_diff_vs_fp32"] <= 0.01
    assert lines[0].startswith("alex     64px  reference")
    service = result["service"]
    assert (service["net"], service["size"], service["pairs"]) == ("alex", 64, 8)
    assert service["service_pairs_s"] > 0 and service["max_abs_diff_service_vs_reference"] <= 1e-5
    assert lines[1].startswith("alex     64px  reference")
    assert "service (submit -> rows, 1 worker, x8, median of 1)" in lines[1]


def test_quick_service_benchmark_stores_every_pair_with_the_reference_distances(tmp_path):
    _lines, row = quick_bench("service.py", tmp_path)
    assert (row["net"], row["size"], row["pairs"]) == ("alex", 64, 8)
    assert row["service_pairs_s"] > 0 and row["embedded_pairs_s"] > 0 and row["reference_pairs_s"] > 0
    assert row["max_abs_diff_service_vs_reference"] <= 1e-5
    assert row["max_abs_diff_embedded_vs_reference"] <= 1e-5


def test_quick_decode_benchmark_prints_its_table(tmp_path):
    """The pipeline bench in its short mode: in-process and one decode process against the reference."""
    lines, (row,) = quick_bench("decode.py", tmp_path, "--processes", "0", "1")
    assert (row["net"], row["size"], row["pairs"], row["device"], row["reference_batch"]) == ("alex", 64, 8, "cpu", 8)
    sides = [(side["precision"], side["decode_processes"]) for side in row["ours"]]
    assert sides == [("fp32", 0), ("fp32", 1), ("bf16", 0), ("bf16", 1)]
    for side in row["ours"]:
        assert side["pairs_s"] > 0 and side["ratio"] > 0
        assert side["max_abs_diff_vs_reference"] <= (1e-5 if side["precision"] == "fp32" else 0.01)
    assert lines[0].startswith("alex     64px x8    reference") and "(batch 8; " in lines[0]
    assert lines[2].startswith("      fp32  decode processes 1 ") and len(lines) == 5


def test_the_gpu_script_runs_end_to_end_on_the_cpu_in_its_dry_mode(tmp_path):
    """bench/gpu.sh is run on a GPU machine by hand: its dry mode proves on every CI run that it works."""
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "results-gpu-dry.json").read_text())
    assert [(row["net"], row["size"]) for row in rows] == [("alex", 64), ("alex", 96), ("vgg", 64), ("vgg", 96)]
    assert all(len(row["ours"]) == 4 and row["reference_batch"] in (4, 8) for row in rows)


def test_the_budget_bench_takes_the_pipeline_apart_in_its_quick_mode(tmp_path):
    lines, rows = quick_bench("budget.py", tmp_path)
    assert [(row["size"], row["pairs"], row["precision"], row["reference_batch"]) for row in rows] == [
        (64, 8, "fp32", 8), (64, 8, "bf16", 8)]
    for row in rows:
        assert list(row["ms_per_pair"]) == ["reference", "trunk", "network", "decode", "unscored", "pipeline"]
        assert all(ms > 0 for ms in row["ms_per_pair"].values())
        assert row["max_abs_diff_vs_reference"] <= (1e-5 if row["precision"] == "fp32" else 0.01)
        ms = row["ms_per_pair"]
        assert row["scores_ms"] == max(0.0, ms["pipeline"] - ms["unscored"])
        assert row["parts_ms"] == pytest.approx(ms["network"] + ms["decode"] / row["cores"] + row["scores_ms"])
        assert row["bound"] == pytest.approx(ms["reference"] / row["parts_ms"])
        assert row["ratio"] == pytest.approx(ms["reference"] / ms["pipeline"])
        assert row["trunk_gflop_per_pair"] == pytest.approx(2 * ALEX_64PX_GFLOP)  # both images of a pair
        assert row["trunk_gflops"] == pytest.approx(row["trunk_gflop_per_pair"] * 1e3 / ms["trunk"])
        assert row["wide_conv_gflops"] > 0
    assert lines[0].startswith("alex 64px x8 fp32: reference batch 8, ours ")
    assert len(lines) == 18 and "bound" in lines[7] and "bound" in lines[16]
    assert lines[8].startswith("  trunk 0.158 GFLOP/pair at ") and lines[8].endswith(" GFLOP/s in fp32")
