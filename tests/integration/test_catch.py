"""Issue 13's acceptance on the generated corpus (bench/catch_corpus.py), end to end through the CLI
on the embedded executor: calibrate on good re-renders, then check: new good re-renders pass, and every
regression class fails with its reason and, for localised damage, a `where` box on the damage. And
the catch bench in its quick mode reports the same: every class caught, no false alarm."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bench.catch_corpus import REGRESSIONS, write_corpus
from gate.cli import main
from gate.vocabulary import SCORES

ROOT = Path(__file__).resolve().parents[2]
SUITE = "catch"
SCENES, CALIB = 2, 3
EXPECTED_REASONS = {  # any of these among a pair's failed rules names the regression for what it is
    "fireflies": {"fireflies"},
    "missing_object": {"region"},
    "texture_dropout": {"region"},
    "black_frame": {"flat"},
    "grey_frame": {"flat"},
    "colour_cast": {"region", "outliers", "tone"},
    "exposure": {"distance", "area", "tone"},
    "shadow_acne": {"region"},
    "nan_block": {"outliers"},
    "banding": {"region", "area", "tone", "levels"},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """256px, two scenes (sampling noise sigma 6 and 14), three calibration and two test re-renders."""
    root = tmp_path_factory.mktemp("catch") / "images"
    return root, write_corpus(root, size=256, scenes=SCENES, calib=CALIB, test=2)


def _gate(db_url: str, root: Path, *args: str) -> Result:
    env = {
        "LPIPS_GATE_DATABASE_URL": db_url,
        "LPIPS_GATE_IMAGE_ROOT": str(root),
        "LPIPS_GATE_BROKER_URL": None,
        "LPIPS_GATE_WEBHOOK_URL": None,
        "LPIPS_GATE_DEVICE": "cpu",
    }
    return CliRunner().invoke(main, list(args), env=env)


def _check(db_url: str, root: Path, folder: str) -> dict[str, Any]:
    """`check --json` of one folder against ref/ with no threshold: the calibration judges."""
    result = _gate(db_url, root, "check", str(root / "ref"), str(root / folder), "--suite", SUITE, "--json")
    assert result.exit_code in (0, 1), (folder, result.output)
    summary = json.loads(result.stdout)
    assert result.exit_code == {"pass": 0, "fail": 1}[summary["verdict"]]
    return summary


def _overlaps(where: list[int] | None, damage: list[int]) -> bool:
    """The reported box meets the damage box (IoU > 0)."""
    if where is None:
        return False
    (ax, ay, aw, ah), (bx, by, bw, bh) = where, damage
    return min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)


def test_calibrated_check_passes_good_re_renders_and_fails_each_regression_with_its_reason_and_region(
    db_url: str, corpus: tuple[Path, dict[str, Any]]
) -> None:
    root, manifest = corpus
    calib = [str(root / folder) for folder in manifest["calib"]]
    calibrated = _gate(db_url, root, "calibrate", str(root / "ref"), *calib, "--suite", SUITE, "--json")
    assert calibrated.exit_code == 0, calibrated.output
    answer = json.loads(calibrated.stdout)
    assert (answer["suite"], answer["pairs"]) == (SUITE, SCENES * CALIB)
    assert {"mean", "region"} <= answer["thresholds"].keys() <= set(SCORES)
    assert all(math.isfinite(value) and value >= 0 for value in answer["thresholds"].values())

    for folder in manifest["test"]:
        summary = _check(db_url, root, folder)
        assert summary["verdict"] == "pass", summary
        for pair in summary["pairs"]:
            assert (pair["verdict"], pair["reasons"], pair["where"]) == ("pass", [], None), pair
            assert set(pair["scores"]) == set(SCORES)
            assert pair["scores"]["mean"] == pytest.approx(pair["distance"], abs=1e-6)

    for name, boxes in manifest["regressions"].items():
        summary = _check(db_url, root, name)
        assert summary["verdict"] == "fail", (name, summary)
        assert [pair["cand"] for pair in summary["pairs"]] == [f"{name}/{file}" for file in boxes]
        for pair, (file, damage) in zip(summary["pairs"], boxes.items(), strict=True):
            assert pair["verdict"] == "fail", (name, file, pair["scores"])
            assert EXPECTED_REASONS[name] & set(pair["reasons"]), (name, file, pair["reasons"], pair["scores"])
            if damage is not None:
                assert _overlaps(pair["where"], damage), (name, file, pair["where"], damage)


def test_the_catch_bench_in_quick_mode_catches_every_class_without_a_false_alarm(tmp_path: Path) -> None:
    out = tmp_path / "catch.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "catch.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (report["net"], report["size"], report["scenes"], report["judged_by"]) == ("alex", 256, 2, "calibration")
    assert (report["calibration"]["suite"], report["calibration"]["pairs"]) == ("catch", 6)
    assert [row["class"] for row in report["classes"]] == list(REGRESSIONS)
    for row in report["classes"]:
        assert (row["pairs"], row["caught"], row["errors"]) == (2, 2, 0), row
        assert row["located"] == (2 if row["localised"] else None), row
    assert (report["good"]["pairs"], report["good"]["false_alarms"]) == (4, 0)
    assert (report["overall"]["catch_rate"], report["overall"]["located_rate"]) == (1.0, 1.0)
    baseline = report["mean_lpips_baseline"]["zero_false_alarms"]
    assert baseline["threshold"] == report["good"]["mean_lpips"]["max"] and baseline["false_alarm_rate"] == 0
    assert report["pairs_checked"] == 2 * 2 + 2 * len(REGRESSIONS)
    lines = done.stdout.splitlines()
    assert lines[0] == ("catch: alex 256px cpu, 2 scenes, 3 calibration + 2 test re-renders each, "
                        "judged by calibrated thresholds")
    assert [line.split()[0] for line in lines[2:12]] == list(REGRESSIONS)
