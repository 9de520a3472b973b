"""`lpips-gate calibrate` end to end: generated renders (a textured scene plus sampling noise, each
re-render with another noise seed), the real LPIPS engine computing in-process, SQLite and
PostgreSQL; then `check`, `wait` and the gate daemon judging by the calibrated thresholds."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner, Result
from PIL import Image
from sqlalchemy import func, select

import gate.cli.calibrate
from gate.calibration import store as calibrations
from gate.calibration.learn import DEFAULT_MARGIN, FLOORS, MIN_PER_IMAGE
from gate.cli import main
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from gate.store.models import Calibration, Run
from tests.support.imports import service_imports

SIZE = 96
IMAGES = ("a.png", "b.png")
BROKER_URL = "redis://127.0.0.1:6379/11"


def _scene(image: int) -> np.ndarray:
    """A deterministic texture: sinusoids of a few frequencies over 8px blocks of colour."""
    rng = np.random.default_rng(100 + image)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    waves = np.zeros((SIZE, SIZE, 3))
    for channel in range(3):
        for _ in range(4):
            fx, fy, phase = rng.uniform(2, 12), rng.uniform(2, 12), rng.uniform(0, 2 * np.pi)
            waves[..., channel] += np.sin(2 * np.pi * (fx * x + fy * y) + phase)
    blocks = rng.integers(0, 256, (SIZE // 8, SIZE // 8, 3)).repeat(8, 0).repeat(8, 1)
    return 0.6 * (128 + 25 * waves) + 0.4 * blocks


def _render(image: int, seed: int) -> np.ndarray:
    """The scene with Gaussian sampling noise (sigma 10): each seed is another good render."""
    noise = np.random.default_rng(seed).normal(0, 10, (SIZE, SIZE, 3))
    return np.clip(_scene(image) + noise, 0, 255).astype(np.uint8)


def _save(folder: Path, name: str, pixels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)


@pytest.fixture
def renders(tmp_path: Path) -> Path:
    """ref/, good1/ .. good6/ (re-renders with other seeds) and hole/ (a re-render with a black 24px
    square: a missing object)."""
    root = tmp_path / "renders"
    for image, name in enumerate(IMAGES):
        _save(root / "ref", name, _render(image, 1000 + image))
        for good in range(1, 7):
            _save(root / f"good{good}", name, _render(image, 10 * good + image))
        damaged = _render(image, 90 + image)
        damaged[40:64, 40:64] = 0
        _save(root / "hole", name, damaged)
    return root


def _lpips_gate(db_url: str, root: Path, *args: str, **env: str | None) -> Result:
    settings = {
        "LPIPS_GATE_DATABASE_URL": db_url,
        "LPIPS_GATE_IMAGE_ROOT": str(root),
        "LPIPS_GATE_BROKER_URL": None,
        "LPIPS_GATE_WEBHOOK_URL": None,
        "LPIPS_GATE_DEVICE": "cpu",
    }
    return CliRunner().invoke(main, list(args), env={**settings, **env})


def _calibrate(db_url: str, root: Path, *goods: str, suite: str = "render", args: tuple[str, ...] = ()) -> Result:
    folders = [str(root / good) for good in goods]
    return _lpips_gate(db_url, root, "calibrate", str(root / "ref"), *folders, "--suite", suite, *args)


def _check(db_url: str, root: Path, cand: str, *args: str, suite: str = "render") -> Result:
    return _lpips_gate(db_url, root, "check", str(root / "ref"), str(root / cand), "--suite", suite, "--json", *args)


def _verdicts(result: Result) -> tuple[str, list[str]]:
    summary = json.loads(result.stdout)
    return summary["verdict"], [pair["verdict"] for pair in summary["pairs"]]


def _in_store(db_url: str, read):  # noqa: ANN001, ANN202  (a callable of a session)
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            return read(session)
    finally:
        engine.dispose()


def _distances(session, run_ids) -> dict[str, list[float]]:  # noqa: ANN001
    """image name -> the distances of its pairs in the runs."""
    found: dict[str, list[float]] = {name: [] for name in IMAGES}
    for run_id in run_ids:
        for comparison in repo.list_comparisons(session, run_id=run_id):
            found[comparison.cand.rsplit("/", 1)[1]].append(comparison.distance)
    return found


def _limit(distances: list[float], margin: float = DEFAULT_MARGIN) -> float:
    return max(distances) * (1 + margin) + FLOORS["mean"]


def test_calibrate_stores_thresholds_with_history_and_check_judges_by_the_newest(db_url: str, renders: Path,
                                                                                tmp_path: Path) -> None:
    calibrated = _calibrate(db_url, renders, "good1", "good2", "good3", args=("--json",))
    assert calibrated.exit_code == 0, calibrated.output
    shown = json.loads(calibrated.stdout)
    assert sorted(shown) == ["calibration", "created_at", "margin", "net", "pairs", "per_image", "runs", "suite",
                             "thresholds", "weights_version"]
    distances = _in_store(db_url, lambda session: _distances(session, [1, 2, 3]))
    everything = distances["a.png"] + distances["b.png"]
    assert len(everything) == 6 and max(everything) < 0.05  # good renders: sampling noise only
    assert (shown["suite"], shown["net"], shown["calibration"], shown["runs"], shown["pairs"]) == (
        "render", "alex", 1, [1, 2, 3], 6)
    assert (shown["margin"], shown["per_image"]) == (DEFAULT_MARGIN, 2)
    assert shown["thresholds"]["mean"] == pytest.approx(_limit(everything), rel=1e-6)
    assert all(isinstance(limit, float) for limit in shown["thresholds"].values())
    versions = _in_store(db_url, lambda session: {c.weights_version for c in repo.list_comparisons(session, run_id=1)})
    assert versions == {shown["weights_version"]}

    fresh = _check(db_url, renders, "good4")  # a good re-render the calibration has not seen, no --threshold
    assert (fresh.exit_code, _verdicts(fresh)) == (0, ("pass", ["pass", "pass"])), fresh.output
    junit = tmp_path / "hole.xml"
    damaged = _check(db_url, renders, "hole", "--junit", str(junit))
    assert (damaged.exit_code, _verdicts(damaged)) == (1, ("fail", ["fail", "fail"])), damaged.output
    properties = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().find("testsuite/properties")}
    first_limit = _in_store(db_url, lambda session: calibrations.latest(
        session, suite="render", net="alex", weights_version=shown["weights_version"]).limits("hole/a.png")["mean"])
    assert float(properties["threshold"]) == first_limit  # the report shows what judged it: a.png's own limit
    holes = [pair["distance"] for pair in json.loads(damaged.stdout)["pairs"]]
    assert min(holes) > shown["thresholds"]["mean"]  # judged by the calibrated mean
    damaged_run = json.loads(damaged.stdout)["run"]

    lax = _calibrate(db_url, renders, "good4", "good5", "good6", args=("--margin", "100"))
    assert lax.exit_code == 0, lax.output
    assert lax.stdout.splitlines()[0].startswith("suite render: calibration 2 for alex@")
    history = _in_store(db_url, lambda session: calibrations.history(session, suite="render"))
    assert [(c.id, c.run_ids, c.pairs, c.margin) for c in history] == [
        (1, (1, 2, 3), 6, 0.25), (2, (6, 7, 8), 6, 100.0),
    ]
    assert history[0].created_at <= history[1].created_at
    newest = _in_store(db_url, lambda session: calibrations.latest(session, suite="render", net="alex",
                                                                    weights_version=shown["weights_version"]))
    assert newest == history[1]

    again = _check(db_url, renders, "hole")  # the newest calibration, a hundred times the noise, applies
    assert all("distance" in pair["reasons"] for pair in json.loads(damaged.stdout)["pairs"])
    assert all("distance" not in pair["reasons"] for pair in json.loads(again.stdout)["pairs"])
    runs = _in_store(db_url, lambda session: {run.id: run.calibration_ids for run in session.scalars(select(Run))})
    assert (runs[4], runs[5], runs[json.loads(again.stdout)["run"]]) == ([1], [1], [2])
    assert runs[1] is None  # a calibration run: not judged yet

    waited = _lpips_gate(db_url, renders, "wait", str(damaged_run), "--json")  # judged before: shown as judged
    assert (json.loads(waited.stdout)["verdict"], [p["verdict"] for p in json.loads(waited.stdout)["pairs"]]) == (
        "fail", ["fail", "fail"])


def test_per_image_limits_need_three_good_renders_of_the_image(sqlite_url: str, renders: Path) -> None:
    assert MIN_PER_IMAGE == 3
    two = _calibrate(sqlite_url, renders, "good1", "good2", args=("--json",))
    assert (two.exit_code, json.loads(two.stdout)["per_image"]) == (0, 0)
    three = _calibrate(sqlite_url, renders, "good1", "good2", "good3", args=("--json",))
    assert (three.exit_code, json.loads(three.stdout)["per_image"]) == (0, 2)

    def read(session):  # noqa: ANN001, ANN202
        history = calibrations.history(session, suite="render")
        return history, _distances(session, [1, 2]), _distances(session, [3, 4, 5])

    (first, second), two_runs, three_runs = _in_store(sqlite_url, read)
    assert first.per_image == {}
    assert first.limits("good6/a.png") == first.limits("good6/b.png") == first.thresholds  # the suite's
    assert first.thresholds["mean"] == pytest.approx(_limit(two_runs["a.png"] + two_runs["b.png"]), rel=1e-6)
    assert sorted(second.per_image) == ["a.png", "b.png"]
    for name in IMAGES:
        assert second.limits(f"good6/{name}")["mean"] == pytest.approx(_limit(three_runs[name]), rel=1e-6)
    assert second.thresholds["mean"] == max(second.per_image[name]["mean"] for name in IMAGES)
    assert second.limits("good6/c.png") == second.thresholds  # an image it never saw: the suite's


def test_explicit_thresholds_win_and_an_uncalibrated_net_is_still_refused(sqlite_url: str, renders: Path,
                                                                          tmp_path: Path) -> None:
    assert _calibrate(sqlite_url, renders, "good1", "good2", "good3").exit_code == 0
    lenient = _check(sqlite_url, renders, "hole", "--threshold", "1.0")  # the mean's limit only
    assert all("distance" not in pair["reasons"] for pair in json.loads(lenient.stdout)["pairs"])
    strict = _check(sqlite_url, renders, "good4", "--threshold", "0.0001")
    assert (strict.exit_code, _verdicts(strict)) == (1, ("fail", ["fail", "fail"]))
    policy = tmp_path / "gate.toml"
    policy.write_text("[suite.render]\nmax_distance = 1.0\n")
    declared = _check(sqlite_url, renders, "hole", "--policies", str(policy))
    assert all("distance" not in pair["reasons"] for pair in json.loads(declared.stdout)["pairs"])
    policy.write_text("[suite.render]\nmax_distance = 1.0\nmax_region = 10.0\nmax_outliers = 1000000\n"
                      "max_tone = 255\nmax_levels_lost = 1.0\n")
    declared = _check(sqlite_url, renders, "hole", "--policies", str(policy))
    assert (declared.exit_code, _verdicts(declared)) == (0, ("pass", ["pass", "pass"]))

    for args, suite in ((("--net", "vgg"), "render"), ((), "other")):
        refused = _check(sqlite_url, renders, "good4", *args, suite=suite)
        assert (refused.exit_code, refused.stderr) == (
            2, f"Error: --threshold: none given and the policies set no max_distance for suite {suite!r}\n")
    assert _in_store(sqlite_url, lambda session: session.scalar(select(func.count()).select_from(Run))) == 7


def test_the_daemon_judges_a_submitted_run_by_the_calibration(sqlite_url: str, renders: Path) -> None:
    assert _calibrate(sqlite_url, renders, "good1", "good2", "good3").exit_code == 0
    submitted = _lpips_gate(sqlite_url, renders, "submit", str(renders / "ref"), str(renders / "hole"),
                            "--suite", "render", "--json")
    run = json.loads(submitted.stdout)["run"]
    daemon = _lpips_gate(sqlite_url, renders, "gate", "--once")  # no policies: calibrated or nothing
    judged = {line["run"]: line["verdict"] for line in map(json.loads, daemon.stderr.splitlines())
              if line["event"] == "run judged"}
    assert (daemon.exit_code, judged) == (0, {1: "pass", 2: "pass", 3: "pass", run: "fail"})
    waited = json.loads(_lpips_gate(sqlite_url, renders, "wait", str(run), "--json").stdout)
    assert [pair["verdict"] for pair in waited["pairs"]] == ["fail", "fail"]
    assert _in_store(sqlite_url, lambda session: session.get(Run, run).calibration_ids) == [1]


def test_the_calibrate_command_calls_one_service_and_nothing_private() -> None:
    imported = service_imports(gate.cli.calibrate.__file__)
    assert ("gate.calibration.service", "calibrate") in imported
    assert [name for _module, name in imported if name.startswith("_")] == []


# --- refused -----------------------------------------------------------------------------------


def test_unpairable_or_repeated_folders_are_refused_before_any_run(sqlite_url: str, renders: Path) -> None:
    (renders / "good2" / "b.png").unlink()
    cases = [
        (("good1", "good2"),
         f"Error: unmatched files: 1 in {renders / 'ref'} without a candidate in {renders / 'good2'}: b.png\n"),
        (("good1", "good1"), f"Error: GOOD_DIR {renders / 'good1'}: already given as GOOD_DIR\n"),
        (("good1", "ref"), f"Error: GOOD_DIR {renders / 'ref'}: already given as REF_DIR\n"),
    ]
    for goods, error in cases:
        refused = _calibrate(sqlite_url, renders, *goods)
        assert (refused.exit_code, refused.stdout, refused.stderr) == (2, "", error)
    negative = _calibrate(sqlite_url, renders, "good1", args=("--margin", "-1"))
    assert negative.exit_code == 2 and "--margin" in negative.stderr
    none = _lpips_gate(sqlite_url, renders, "calibrate", str(renders / "ref"), "--suite", "render")
    assert none.exit_code == 2 and "GOOD_DIR..." in none.stderr

    def stored(session):  # noqa: ANN001, ANN202
        return [session.scalar(select(func.count()).select_from(model)) for model in (Run, Calibration)]

    assert _in_store(sqlite_url, stored) == [0, 0]


@pytest.fixture
def broker():
    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield BROKER_URL
    client.flushdb()
    client.close()


def test_with_no_worker_running_calibrate_times_out_and_stores_nothing(pg_url: str, renders: Path,
                                                                       broker: str) -> None:
    result = _lpips_gate(pg_url, renders, "calibrate", str(renders / "ref"), str(renders / "good1"),
                         str(renders / "good2"), "--suite", "render", "--timeout", "0.5", LPIPS_GATE_BROKER_URL=broker)
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", "Error: runs 1, 2: not all finished after 0.5 s: nothing calibrated\n")
    assert _in_store(pg_url, lambda session: session.scalar(select(func.count()).select_from(Calibration))) == 0
