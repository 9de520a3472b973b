"""`lpips-gate check` end to end: real images, the real LPIPS engine with provisioned weights, computed
in-process (the embedded mode) on SQLite and PostgreSQL, and through a Celery worker on Redis; exit
codes, printed pairs, alert rows, the HTML report in headless Chromium and the JUnit XML."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner, Result
from PIL import Image

import gate.cli.judging
from gate.alerts import store as alert_store
from gate.cli import main
from gate.judging.policy import PolicySet, policy_hash, suite_policy
from gate.report.html import IMAGE_WIDTH_PX
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from tests.corpus import truncated_error
from tests.support.imports import service_imports
from tests.unit.gate.test_report import _screenshot, _solid_box

SIZE = 64
MAGENTA, CYAN = (255, 0, 255), (0, 255, 255)
BROKER_URL = "redis://127.0.0.1:6379/13"


def _noise(seed: int) -> np.ndarray:
    """Colour noise: a texture with healthy features at every layer."""
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _grey_noise(seed: int) -> np.ndarray:
    """Grey noise: never close to magenta or cyan, so those stay findable in a screenshot."""
    grey = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _save(folder: Path, name: str, pixels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)


def _nudged(pixels: np.ndarray, seed: int) -> np.ndarray:
    """The image with +-8 of noise: perceptually the same."""
    noise = np.random.default_rng(seed).integers(-8, 9, pixels.shape)
    return np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """ref/ (two textures); new/: a.png close, b.png all black; ok/: both close."""
    root = tmp_path / "images"
    for name, seed in (("a.png", 1), ("b.png", 2)):
        reference = _noise(seed)
        _save(root / "ref", name, reference)
        _save(root / "ok", name, _nudged(reference, seed + 10))
    _save(root / "new", "a.png", _nudged(_noise(1), 11))
    _save(root / "new", "b.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    return root


def _check(db_url: str, root: Path, cand: str, *args: str, suite: str = "smoke", **env: str) -> Result:
    settings = {
        "LPIPS_GATE_DATABASE_URL": db_url,
        "LPIPS_GATE_IMAGE_ROOT": str(root),
        "LPIPS_GATE_BROKER_URL": None,
        "LPIPS_GATE_WEBHOOK_URL": None,
        "LPIPS_GATE_DEVICE": "cpu",
    }
    command = ["check", str(root / "ref"), str(root / cand), "--suite", suite, *args]
    return CliRunner().invoke(main, command, env={**settings, **env})


def _alerts(db_url: str, *rules: str) -> list[tuple]:
    """The store's alerts, of `rules` only when given."""
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            return [(a.rule, a.state, a.labels, a.annotations, a.run_id) for a in alert_store.list_alerts(session)
                    if not rules or a.rule in rules]
    finally:
        engine.dispose()


def _pairs(result: Result) -> list[tuple]:
    return [(pair["ref"], pair["cand"], pair["verdict"], pair["error"]) for pair in json.loads(result.stdout)["pairs"]]


def test_a_failing_pair_exits_1_opens_one_alert_and_a_passing_run_resolves_it(db_url: str, images: Path) -> None:
    failing = _check(db_url, images, "new", "--threshold", "0.1", "--json")
    assert failing.exit_code == 1, failing.output
    summary = json.loads(failing.stdout)
    assert (summary["run"], summary["suite"], summary["verdict"]) == (1, "smoke", "fail")
    assert summary["policy"] == policy_hash(suite_policy(PolicySet(), suite="smoke", threshold=0.1))
    assert _pairs(failing) == [
        ("ref/a.png", "new/a.png", "pass", None),
        ("ref/b.png", "new/b.png", "fail", None),
    ]
    near, black = (pair["distance"] for pair in summary["pairs"])
    assert near < 0.01 and black > 0.5
    [(rule, state, labels, annotations, run)] = _alerts(db_url, "distance")  # b.png also opens feature-quality ones
    assert (rule, state, labels["suite"], labels["net"], run) == ("distance", "open", "smoke", "alex", 1)
    assert annotations == {"worst_pair": "ref/b.png -> new/b.png", "failed": "1 of 2"}

    again = _check(db_url, images, "new", "--threshold", "0.1")
    assert again.exit_code == 1
    assert again.stdout.splitlines()[0] == "run 2 (suite smoke): verdict fail"
    assert again.stdout.splitlines()[2].startswith("fail ") and again.stdout.splitlines()[2].endswith(
        "  ref/b.png -> new/b.png"
    )
    assert [(rule, state, run) for rule, state, _, _, run in _alerts(db_url, "distance")] == [("distance", "open", 2)]

    passing = _check(db_url, images, "ok", "--threshold", "0.1", "--json")
    assert (passing.exit_code, json.loads(passing.stdout)["verdict"]) == (0, "pass")
    assert [(rule, state, run) for rule, state, _, _, run in _alerts(db_url, "distance")] == [
        ("distance", "resolved", 2)
    ]


def test_black_and_flat_candidates_open_sparsity_and_variance_alerts(sqlite_url: str, images: Path, tmp_path) -> None:
    """Measured on these 64x64 inputs with the alex trunk: all black drives features.11 to 94.4% zeros
    (the textures and flat grey: 90-91%), flat grey takes features.1's std to 0.27 (textures: 1.66+).
    The defaults (98%, 1e-4) are for dead layers; this policy is what a render suite would set."""
    _save(images / "flat", "a.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    _save(images / "flat", "b.png", np.full((SIZE, SIZE, 3), 128, np.uint8))
    policy = tmp_path / "gate.yaml"
    policy.write_text("suite:\n  smoke:\n    max_distance: 2.0\n    max_sparsity: 0.925\n    min_std: 0.3\n"
                      "    fail_flat: false\n")  # alerts, not verdicts, are what this run is about
    junit = tmp_path / "run.xml"
    result = _check(sqlite_url, images, "flat", "--policies", str(policy), "--json", "--junit", str(junit))
    assert (result.exit_code, json.loads(result.stdout)["verdict"]) == (0, "pass")
    properties = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().find("testsuite/properties")}
    assert {name: properties[name] for name in ("run", "verdict", "threshold")} == {
        "run": "1", "verdict": "pass", "threshold": "2.0"}  # the policy's, no --threshold
    alerts = [
        (rule, state, labels["layer"], labels["side"], notes["image"])
        for rule, state, labels, notes, _ in _alerts(sqlite_url, "sparsity", "variance")
    ]
    assert alerts == [
        ("sparsity", "open", "features.11", "cand", "flat/a.png"),
        ("variance", "open", "features.1", "cand", "flat/b.png"),
    ]


def _report_images(root: Path) -> None:
    """report/ref/a.png and report/new/a.png: grey noise with a magenta, and a cyan, top-left quadrant."""
    for folder, colour in (("ref", MAGENTA), ("new", CYAN)):
        pixels = _grey_noise(5)
        pixels[: SIZE // 2, : SIZE // 2] = colour
        _save(root / "report" / folder, "a.png", pixels)


def test_the_report_shows_both_images_and_the_heatmap(sqlite_url: str, images: Path, tmp_path: Path) -> None:
    _report_images(images)
    report, junit = tmp_path / "run.html", tmp_path / "run.xml"
    root = images / "report"
    result = CliRunner().invoke(
        main,
        [
            "check",
            str(root / "ref"),
            str(root / "new"),
            "--suite",
            "report",
            "--threshold",
            "0.01",
            "--report",
            str(report),
            "--junit",
            str(junit),
        ],
        env={
            "LPIPS_GATE_DATABASE_URL": sqlite_url,
            "LPIPS_GATE_IMAGE_ROOT": str(images),
            "LPIPS_GATE_DEVICE": "cpu",
            "LPIPS_GATE_BROKER_URL": None,
        },
    )
    assert result.exit_code == 1, result.output
    html = report.read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 3 and "per-layer contribution" in html

    pixels = _screenshot(html, tmp_path)
    ref_left, ref_top, ref_right, _ = _solid_box(pixels, MAGENTA)
    cand_left, cand_top, _, cand_bottom = _solid_box(pixels, CYAN)
    half = IMAGE_WIDTH_PX // 2  # the quadrant, shown twice as wide as the report's 352 px images / 2
    assert abs((ref_right - ref_left) - half) <= 2 and abs((cand_bottom - cand_top) - half) <= 2
    assert cand_top == ref_top and cand_left > ref_right
    heatmap_left = cand_left + (cand_left - ref_left)  # the third figure, one figure further right
    shown = pixels[ref_top + 8 : ref_top + IMAGE_WIDTH_PX - 8, heatmap_left + 8 : heatmap_left + IMAGE_WIDTH_PX - 8]
    expected = _stored_heatmap(sqlite_url).resize((IMAGE_WIDTH_PX, IMAGE_WIDTH_PX), Image.BILINEAR)
    expected = np.asarray(expected.convert("RGB")).astype(int)[8:-8, 8:-8]
    assert np.abs(shown - expected).mean() < 12  # the stored heatmap, where the report puts it
    assert np.all(np.abs(pixels - (9, 105, 218)) <= 2, axis=-1).sum() > 100  # the per-layer bars (#0969da)

    [suite] = ET.parse(junit).getroot()
    assert {key: suite.get(key) for key in ("name", "tests", "failures", "errors")} == {
        "name": "report",
        "tests": "1",
        "failures": "1",
        "errors": "0",
    }
    [case] = suite.findall("testcase")
    assert case.get("name") == "a.png"  # its path under the candidate folder
    assert case.find("failure").get("message").endswith(" > threshold 0.01")
    heatmap = tmp_path / "run-heatmaps/a.png"
    assert case.findtext("system-out") == f"[[ATTACHMENT|{heatmap.as_posix()}]]"
    assert np.array_equal(np.asarray(Image.open(heatmap)), np.asarray(_stored_heatmap(sqlite_url)))


def _stored_heatmap(db_url: str) -> Image.Image:
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            [comparison] = repo.list_comparisons(session, run_id=1)
            png = comparison.heatmap_png
    finally:
        engine.dispose()
    image = Image.open(io.BytesIO(png))
    assert image.size == (SIZE, SIZE)
    return image


def test_the_check_command_calls_one_service_and_nothing_private() -> None:
    """The CLI parses, calls gate.runs.check and prints: it reaches no private helper of a service."""
    imported = service_imports(gate.cli.judging.__file__)
    assert ("gate.runs.check", "check") in imported
    assert [name for _module, name in imported if name.startswith("_")] == []


# --- refused up front --------------------------------------------------------------------------


def test_without_any_threshold_check_refuses_before_computing(sqlite_empty_url: str, images: Path) -> None:
    result = _check(sqlite_empty_url, images, "new")
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        "Error: --threshold: none given and the policies set no max_distance for suite 'smoke'\n",
    )
    assert not Path(sqlite_empty_url.removeprefix("sqlite:///")).exists()  # nothing stored


def test_a_bad_policy_file_is_named(sqlite_url: str, images: Path, tmp_path: Path) -> None:
    policy = tmp_path / "gate.toml"
    policy.write_text("[suite.smoke]\nmax_distance = 'high'\n")
    result = _check(sqlite_url, images, "new", "--policies", str(policy))
    assert (result.exit_code, result.stderr) == (
        2,
        f"Error: --policies: {policy}: suite.smoke.max_distance: "
        + "Input should be a valid number, unable to parse string as a number\n",
    )


def test_a_missing_candidate_fails_the_run_by_name(sqlite_url: str, images: Path) -> None:
    (images / "ok" / "b.png").unlink()
    result = _check(sqlite_url, images, "ok", "--threshold", "0.1")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[:2] == [
        "run 1 (suite smoke): verdict fail", "  1 missing frame(s) (missing=fail): b.png",
    ]
    assert result.stdout.splitlines()[3] == "fail           -  ref/b.png -> ok/b.png"


# --- through the broker ------------------------------------------------------------------------


@pytest.fixture
def broker():
    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield BROKER_URL
    client.flushdb()
    client.close()


def test_with_no_worker_running_check_times_out_with_exit_2(pg_url: str, images: Path, broker: str) -> None:
    result = _check(pg_url, images, "new", "--threshold", "0.1", "--timeout", "0.5", LPIPS_GATE_BROKER_URL=broker)
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        "Error: run 1: timed out after 0.5 s (done 0 of 2)\n",
    )


def test_the_daemon_judges_a_run_of_check_by_the_checks_policy(pg_url: str, images: Path, broker: str,
                                                               tmp_path: Path) -> None:
    """The check gives up before any worker computes; its run keeps the check's stricter threshold as
    its own policy, so the daemon, first to judge it, gives the check's verdict, not its own policies'."""
    timed_out = _check(pg_url, images, "new", "--threshold", "0.1", "--timeout", "0.5", LPIPS_GATE_BROKER_URL=broker)
    assert timed_out.exit_code == 2
    engine = make_engine(pg_url)
    try:
        with session_scope(engine) as session:  # scored as a worker would
            for comparison, distance in zip(repo.list_comparisons(session, run_id=1), (0.05, 0.3), strict=True):
                repo.record_result(session, comparison_id=comparison.id, distance=distance, net="alex",
                                   weights_version="w1", precision="fp32", layers=[])
    finally:
        engine.dispose()
    lax = tmp_path / "lax.toml"
    lax.write_text("[suite.smoke]\nmax_distance = 0.5\n")
    env = {"LPIPS_GATE_DATABASE_URL": pg_url, "LPIPS_GATE_BROKER_URL": None, "LPIPS_GATE_WEBHOOK_URL": None}
    daemon = CliRunner().invoke(main, ["gate", "--policies", str(lax), "--once"], env=env)
    judged = [json.loads(line) for line in daemon.stderr.splitlines() if json.loads(line)["event"] == "run judged"]
    assert (daemon.exit_code, [(line["run"], line["verdict"]) for line in judged]) == (0, [(1, "fail")])
    waited = CliRunner().invoke(main, ["wait", "1", "--json"], env=env)
    summary = json.loads(waited.stdout)
    assert (summary["verdict"], summary["policy"]) == (
        "fail", policy_hash(suite_policy(PolicySet(), suite="smoke", threshold=0.1)),
    )
    assert [(pair["status"], pair["verdict"]) for pair in summary["pairs"]] == [("done", "pass"), ("done", "fail")]


def test_check_through_a_celery_worker(pg_url: str, images: Path, broker: str) -> None:
    env = {
        **os.environ,
        "LPIPS_GATE_DATABASE_URL": pg_url,
        "LPIPS_GATE_BROKER_URL": broker,
        "LPIPS_GATE_IMAGE_ROOT": str(images),
        "LPIPS_GATE_DEVICE": "cpu",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "gate.cli", "worker", "--pool", "solo"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = _check(
            pg_url, images, "new", "--threshold", "0.1", "--json", "--timeout", "120", LPIPS_GATE_BROKER_URL=broker
        )
    finally:
        worker.terminate()
        worker.wait(30)
    assert result.exit_code == 1, result.output
    assert _pairs(result) == [("ref/a.png", "new/a.png", "pass", None), ("ref/b.png", "new/b.png", "fail", None)]
    assert [(rule, state) for rule, state, *_ in _alerts(pg_url, "distance")] == [("distance", "open")]


def test_a_pair_that_cannot_be_scored_makes_the_run_an_error(sqlite_url: str, images: Path) -> None:
    (images / "new" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = _check(sqlite_url, images, "new", "--threshold", "0.1", "--json")
    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    assert (summary["verdict"], [pair["verdict"] for pair in summary["pairs"]]) == ("error", ["pass", "error"])
    assert [pair["status"] for pair in summary["pairs"]] == ["done", "error"]
    assert truncated_error(images / "new" / "b.png").fullmatch(summary["pairs"][1]["error"])
    assert result.stderr.splitlines()[-1] == "run 1: 1 comparison(s) could not be scored"


def test_a_report_that_could_not_be_written_is_refused_up_front(sqlite_empty_url: str, images: Path) -> None:
    report = images / "missing" / "run.html"
    result = _check(sqlite_empty_url, images, "new", "--threshold", "0.1", "--report", str(report))
    assert (result.exit_code, result.stderr) == (2, f"Error: --report: {report}: its folder does not exist\n")
    assert not Path(sqlite_empty_url.removeprefix("sqlite:///")).exists()  # nothing stored


def test_bf16_check_stores_its_precision_and_stays_within_0_01_of_fp32(sqlite_url: str, images: Path) -> None:
    runs = {}
    for precision in ("fp32", "bf16"):
        result = _check(sqlite_url, images, "ok", "--threshold", "0.5", "--precision", precision, "--json",
                        suite=f"precision-{precision}")
        assert result.exit_code == 0, result.output
        runs[precision] = json.loads(result.stdout)["run"]
    engine = make_engine(sqlite_url)
    try:
        with session_scope(engine) as session:
            rows = {p: repo.list_comparisons(session, run_id=run) for p, run in runs.items()}
    finally:
        engine.dispose()
    assert [r.precision for r in rows["bf16"]] == ["bf16", "bf16"]
    assert [r.precision for r in rows["fp32"]] == ["fp32", "fp32"]
    for fp32, bf16 in zip(rows["fp32"], rows["bf16"]):
        assert fp32.distance > 0 and abs(fp32.distance - bf16.distance) <= 0.01
