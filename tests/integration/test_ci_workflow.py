"""The CI contract of issue 14, end to end on the embedded default (SQLite, the engine in-process) and
PostgreSQL: exit codes with their JSON for pass, fail, error and timeout; new, missing and escaping
frames; run metadata; stable JUnit; approving a run's candidates as references."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner, Result
from PIL import Image
from sqlalchemy import select

from gate.alerts import store as alert_store
from gate.alerts.lifecycle import outgoing
from gate.cli import main
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from gate.store.models import Approval
from tests.unit.worker.test_science_hdr import rgb_exr

SIZE = 64
BROKER_URL = "redis://127.0.0.1:6379/11"  # no worker listens: what a timeout needs


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _nudged(pixels: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-8, 9, pixels.shape)
    return np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """ref/ (a.png, sub/b.png); ok/: both close; bad/: b.png black; broken/: b.png truncated."""
    root = tmp_path / "images"
    for name, seed in (("a.png", 1), ("sub/b.png", 2)):
        _save(root / "ref" / name, _noise(seed))
        _save(root / "ok" / name, _nudged(_noise(seed), seed + 10))
        _save(root / "bad" / name, _nudged(_noise(seed), seed + 10))
        _save(root / "broken" / name, _nudged(_noise(seed), seed + 10))
    _save(root / "bad/sub/b.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    data = (root / "broken/sub/b.png").read_bytes()
    (root / "broken/sub/b.png").write_bytes(data[: len(data) // 2])
    return root


def _env(db_url: str, root: Path, **extra: str | None) -> dict[str, str | None]:
    return {"LPIPS_GATE_DATABASE_URL": db_url, "LPIPS_GATE_IMAGE_ROOT": str(root), "LPIPS_GATE_BROKER_URL": None,
            "LPIPS_GATE_WEBHOOK_URL": None, "LPIPS_GATE_DEVICE": "cpu", **extra}


def _cli(db_url: str, root: Path, *args: str, **extra: str | None) -> Result:
    return CliRunner().invoke(main, list(args), env=_env(db_url, root, **extra))


def _check(db_url: str, root: Path, cand: str, *args: str, **extra: str | None) -> Result:
    return _cli(db_url, root, "check", str(root / "ref"), str(root / cand), "--suite", "ci", *args, **extra)


# --- exit codes and JSON -----------------------------------------------------------------------


def test_check_exits_0_1_2_for_pass_fail_error_and_prints_json_every_time(db_url: str, images: Path) -> None:
    passed = _check(db_url, images, "ok", "--threshold", "0.1", "--json")
    assert (passed.exit_code, json.loads(passed.stdout)["verdict"]) == (0, "pass"), passed.output
    failed = _check(db_url, images, "bad", "--threshold", "0.1", "--json")
    assert (failed.exit_code, json.loads(failed.stdout)["verdict"]) == (1, "fail")
    broken = _check(db_url, images, "broken", "--threshold", "0.1", "--json")
    summary = json.loads(broken.stdout)
    assert (broken.exit_code, summary["verdict"]) == (2, "error")
    assert [(p["cand"], p["status"], p["verdict"]) for p in summary["pairs"]] == [
        ("broken/a.png", "done", "pass"), ("broken/sub/b.png", "error", "error"),
    ]
    refused = _check(db_url, images, "nowhere", "--threshold", "0.1", "--json")
    assert refused.exit_code == 2
    assert json.loads(refused.stdout) == {"error": f"{images / 'nowhere'}: not a directory", "exit": 2}
    usage = _check(db_url, images, "ok", "--threshold", "much", "--json")
    assert usage.exit_code == 2 and json.loads(usage.stdout)["exit"] == 2
    assert "--threshold" in json.loads(usage.stdout)["error"]


def test_wait_exits_by_the_verdict_and_takes_a_policy_the_run_lacks(db_url: str, images: Path) -> None:
    submitted = _cli(db_url, images, "submit", str(images / "ref"), str(images / "bad"), "--suite", "ci", "--json")
    assert submitted.exit_code == 0, submitted.output
    run = json.loads(submitted.stdout)["run"]
    pending = _cli(db_url, images, "wait", str(run), "--json")  # no policy: not judged, not a pass
    assert (pending.exit_code, json.loads(pending.stdout)["verdict"]) == (2, None)
    failed = _cli(db_url, images, "wait", str(run), "--threshold", "0.1", "--json")
    assert (failed.exit_code, json.loads(failed.stdout)["verdict"]) == (1, "fail")
    again = _cli(db_url, images, "wait", str(run), "--json")  # judged: the recorded policy
    assert (again.exit_code, json.loads(again.stdout)["verdict"]) == (1, "fail")
    other = _cli(db_url, images, "wait", str(run), "--threshold", "0.9", "--json")
    assert other.exit_code == 2
    assert json.loads(other.stdout)["run"] == run and "differ" in json.loads(other.stdout)["error"]
    same = _cli(db_url, images, "wait", str(run), "--threshold", "0.1")
    assert same.exit_code == 1

    passing = _cli(db_url, images, "submit", str(images / "ref"), str(images / "ok"), "--suite", "ci",
                   "--threshold", "0.1", "--json")
    done = _cli(db_url, images, "wait", str(json.loads(passing.stdout)["run"]), "--json")
    assert (done.exit_code, json.loads(done.stdout)["verdict"]) == (0, "pass")


def test_wait_and_check_time_out_with_exit_2_and_the_run_in_json(sqlite_url: str, images: Path) -> None:
    engine = make_engine(sqlite_url)
    with session_scope(engine) as session:
        run = repo.create_run(session, suite_name="ci", pairs=[("ref/a.png", "ok/a.png")], net="alex",
                              version="0.1", precision="fp32").id
    engine.dispose()
    waited = _cli(sqlite_url, images, "wait", str(run), "--timeout", "0.2", "--json")
    assert waited.exit_code == 2
    assert json.loads(waited.stdout) == {"error": f"run {run}: timed out after 0.2 s (done 0 of 1)", "exit": 2,
                                         "run": run}
    queue = redis.Redis.from_url(BROKER_URL)
    queue.flushdb()
    try:
        checked = _check(sqlite_url, images, "ok", "--threshold", "0.1", "--timeout", "0.2", "--json",
                         LPIPS_GATE_BROKER_URL=BROKER_URL)
    finally:
        queue.flushdb()
    assert checked.exit_code == 2
    assert json.loads(checked.stdout) == {"error": f"run {run + 1}: timed out after 0.2 s (done 0 of 2)", "exit": 2,
                                          "run": run + 1}


def test_compare_threshold_exits_1_above_it(images: Path) -> None:
    ref, close, black = (str(images / side / "sub/b.png") for side in ("ref", "ok", "bad"))
    env = {"LPIPS_GATE_DEVICE": "cpu"}
    assert CliRunner().invoke(main, ["compare", ref, close, "--threshold", "0.1"], env=env).exit_code == 0
    above = CliRunner().invoke(main, ["compare", ref, black, "--threshold", "0.1", "--json"], env=env)
    assert above.exit_code == 1 and json.loads(above.stdout)["distance"] > 0.1
    missing = CliRunner().invoke(main, ["compare", ref, str(images / "none.png"), "--json"], env=env)
    assert missing.exit_code == 2 and "none.png" in json.loads(missing.stdout)["error"]


# --- new, missing and escaping frames ----------------------------------------------------------


@pytest.fixture
def changed(images: Path) -> Path:
    """changed/: ok/'s frames, plus added.png (no reference); ref/gone.png has no candidate."""
    for name in ("a.png", "sub/b.png"):
        _save(images / "changed" / name, np.asarray(Image.open(images / "ok" / name)))
    _save(images / "changed/added.png", _noise(7))
    _save(images / "ref/gone.png", _noise(8))
    return images


def _statuses(result: Result) -> list[tuple]:
    return [(p["name"], p["status"], p["verdict"], p["distance"] is not None, p["reasons"])
            for p in json.loads(result.stdout)["pairs"]]


def test_new_and_missing_frames_are_pairs_that_fail_warn_or_pass_the_run(db_url: str, changed: Path) -> None:
    failed = _check(db_url, changed, "changed", "--threshold", "0.1", "--json")
    assert failed.exit_code == 1, failed.output
    assert _statuses(failed) == [
        ("a.png", "done", "pass", True, []), ("added.png", "new", "fail", False, ["new"]),
        ("gone.png", "missing", "fail", False, ["missing"]), ("sub/b.png", "done", "pass", True, []),
    ]
    summary = json.loads(failed.stdout)
    assert summary["reasons"] == [
        "1 new frame(s) (missing=fail): added.png", "1 missing frame(s) (missing=fail): gone.png",
    ]
    assert [(p["ref"], p["cand"]) for p in summary["pairs"]][1:3] == [
        ("ref/added.png", "changed/added.png"), ("ref/gone.png", "changed/gone.png"),
    ]
    warned = _check(db_url, changed, "changed", "--threshold", "0.1", "--missing", "warn", "--json")
    assert (warned.exit_code, json.loads(warned.stdout)["verdict"]) == (0, "pass")
    assert json.loads(warned.stdout)["warnings"] == [
        "added.png: new frame: no reference (missing=warn)", "gone.png: missing frame: no candidate (missing=warn)",
    ]
    ignored = _check(db_url, changed, "changed", "--threshold", "0.1", "--missing", "ignore", "--json")
    assert (ignored.exit_code, json.loads(ignored.stdout)["warnings"]) == (0, [])
    assert [p["status"] for p in json.loads(ignored.stdout)["pairs"]] == ["done", "new", "missing", "done"]


def test_a_frame_linking_out_of_the_image_root_is_that_pairs_error_and_the_rest_is_scored(
        db_url: str, images: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    _save(outside, _noise(1))
    (images / "ok/c.png").symlink_to(outside)
    _save(images / "ref/c.png", _noise(3))
    result = _check(db_url, images, "ok", "--threshold", "0.1", "--json")
    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    assert [(p["name"], p["status"], p["verdict"], p["distance"] is not None) for p in summary["pairs"]] == [
        ("a.png", "done", "pass", True), ("c.png", "error", "error", False), ("sub/b.png", "done", "pass", True),
    ]
    assert summary["pairs"][1]["error"] == f"{images / 'ok/c.png'}: links outside the image root {images}"
    assert summary["verdict"] == "error"


# --- run metadata ------------------------------------------------------------------------------


def test_meta_is_stored_and_shown_by_check_wait_results_junit_and_alerts(db_url: str, images: Path,
                                                                        tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    checked = _check(db_url, images, "bad", "--threshold", "0.1", "--json", "--junit", str(junit),
                     "--meta", "commit=0a1b2c3", "--meta", "pipeline=https://ci.example/p/991")
    assert checked.exit_code == 1, checked.output
    meta = {"commit": "0a1b2c3", "pipeline": "https://ci.example/p/991"}
    run = json.loads(checked.stdout)["run"]
    assert json.loads(checked.stdout)["meta"] == meta
    assert json.loads(_cli(db_url, images, "wait", str(run), "--json").stdout)["meta"] == meta
    shown = json.loads(_cli(db_url, images, "results", "--run", str(run), "--json").stdout)
    assert (shown["meta"], len(shown["comparisons"])) == (meta, 2)
    assert _cli(db_url, images, "results", "--run", str(run)).stdout.splitlines()[:2] == [
        "meta commit=0a1b2c3", "meta pipeline=https://ci.example/p/991",
    ]
    properties = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().find("testsuite/properties")}
    assert (properties["meta.commit"], properties["meta.pipeline"]) == ("0a1b2c3", "https://ci.example/p/991")
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        [distance] = [a for a in alert_store.list_alerts(session) if a.rule == "distance"]
        annotations = dict(distance.annotations)
    engine.dispose()
    assert (annotations["meta_commit"], annotations["meta_pipeline"]) == ("0a1b2c3", "https://ci.example/p/991")
    assert outgoing(distance).annotations["meta_commit"] == "0a1b2c3"


@pytest.mark.parametrize("item", ["commit", "9lives=x", "a-b=c", "=x"])
def test_a_meta_key_must_be_a_word(sqlite_url: str, images: Path, item: str) -> None:
    result = _check(sqlite_url, images, "ok", "--threshold", "0.1", "--meta", item, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"].startswith(f"--meta {item!r}: expected KEY=VALUE")


# --- JUnit -------------------------------------------------------------------------------------


def test_the_same_frames_from_two_folders_give_identical_junit_names_each_with_time(sqlite_url: str, images: Path,
                                                                                    tmp_path: Path) -> None:
    cases = []
    for build in ("build-41/cand", "pipelines/build-42/renders"):
        for name in ("a.png", "sub/b.png"):
            _save(images / build / name, np.asarray(Image.open(images / "bad" / name)))
        junit = tmp_path / f"{build.replace('/', '-')}.xml"
        result = _cli(sqlite_url, images, "check", str(images / "ref"), str(images / build), "--suite", "ci",
                      "--threshold", "0.1", "--junit", str(junit))
        assert result.exit_code == 1, result.output
        suite = ET.parse(junit).getroot().find("testsuite")
        cases.append([(case.get("name"), case.get("classname"), [child.tag for child in case])
                      for case in suite.findall("testcase")])
        assert all(float(case.get("time")) > 0 for case in suite.findall("testcase"))
        [failing] = [case for case in suite.findall("testcase") if case.find("failure") is not None]
        assert failing.find("failure").get("message").startswith("distance ")
        assert failing.find("failure").get("message").endswith(" > threshold 0.1")
        heatmap = junit.parent / f"{junit.stem}-heatmaps/sub/b.png"
        assert failing.findtext("system-out") == f"[[ATTACHMENT|{heatmap.as_posix()}]]" and heatmap.is_file()
    assert cases[0] == cases[1] == [("a.png", "ci", ["system-out"]), ("sub/b.png", "ci", ["failure", "system-out"])]


# --- resize and exposure, as compare applies them ----------------------------------------------


def _compare(*args: str) -> float:
    result = CliRunner().invoke(main, ["compare", *args, "--json"], env={"LPIPS_GATE_DEVICE": "cpu"})
    assert result.exit_code == 0, result.output
    return float(json.loads(result.stdout)["distance"])


def _options(db_url: str, run: int) -> dict:
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        options = dict(repo.get_run(session, run_id=run).options)
    engine.dispose()
    return options


def test_check_applies_resize_and_exposure_as_compare_does(sqlite_url: str, images: Path) -> None:
    _save(images / "small/a.png", np.asarray(Image.open(images / "ok/a.png"))[:48, :48])
    _save(images / "small/sub/b.png", np.asarray(Image.open(images / "ok/sub/b.png"))[:48, :48])
    refused = _check(sqlite_url, images, "small", "--threshold", "1", "--json")
    assert refused.exit_code == 2 and "sizes differ" in json.loads(refused.stdout)["pairs"][0]["error"]
    resized = _check(sqlite_url, images, "small", "--threshold", "1", "--resize", "cand", "--json")
    assert resized.exit_code == 0, resized.output
    [a, _b] = json.loads(resized.stdout)["pairs"]
    assert a["distance"] == pytest.approx(_compare(str(images / "ref/a.png"), str(images / "small/a.png"),
                                                   "--resize", "cand"), abs=1e-6)
    assert _options(sqlite_url, json.loads(resized.stdout)["run"])["resize"] == "cand"

    linear = np.random.default_rng(5).uniform(0, 0.4, (SIZE, SIZE, 3))
    for side, scale in (("hdr_ref", 1.0), ("hdr_cand", 1.6)):
        (images / side).mkdir()
        rgb_exr(images / side / "shot.exr", linear * scale)
    ref, cand = images / "hdr_ref/shot.exr", images / "hdr_cand/shot.exr"
    distances = {}
    for exposure in ("0", "2"):
        checked = _cli(sqlite_url, images, "check", str(ref.parent), str(cand.parent), "--suite", "hdr",
                       "--threshold", "1", "--exposure", exposure, "--json")
        assert checked.exit_code == 0, checked.output
        distances[exposure] = json.loads(checked.stdout)["pairs"][0]["distance"]
        assert distances[exposure] == pytest.approx(_compare(str(ref), str(cand), "--exposure", exposure), abs=1e-6)
    assert abs(distances["0"] - distances["2"]) > 0.01  # the exposure changed what was compared
    assert _options(sqlite_url, json.loads(checked.stdout)["run"])["tonemap"] == "exr:srgb-clamp-v1:exposure=+2"


# --- approve -----------------------------------------------------------------------------------


def _approvals(db_url: str) -> list[tuple]:
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        rows = [(a.run_id, a.ref, a.cand, a.sha256_before, a.sha256_after, a.approved_by)
                for a in session.scalars(select(Approval).order_by(Approval.id))]
    engine.dispose()
    return rows


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_approve_promotes_the_candidates_and_the_next_check_passes_at_distance_0(db_url: str, changed: Path) -> None:
    before = {name: _sha(changed / "ref" / name) for name in ("a.png", "sub/b.png", "gone.png")}
    failed = _check(db_url, changed, "changed", "--threshold", "0.001", "--json")
    assert failed.exit_code == 1, failed.output
    run = json.loads(failed.stdout)["run"]
    approved = _cli(db_url, changed, "approve", str(run), "--by", "lead@studio", "--json")
    assert approved.exit_code == 0, approved.output
    cands = {name: _sha(changed / "changed" / name) for name in ("a.png", "added.png", "sub/b.png")}
    assert json.loads(approved.stdout) == {"run": run, "approved": [
        {"ref": "ref/a.png", "cand": "changed/a.png", "sha256_before": before["a.png"], "sha256_after": cands["a.png"]},
        {"ref": "ref/added.png", "cand": "changed/added.png", "sha256_before": None,
         "sha256_after": cands["added.png"]},
        {"ref": "ref/sub/b.png", "cand": "changed/sub/b.png", "sha256_before": before["sub/b.png"],
         "sha256_after": cands["sub/b.png"]},
    ], "skipped": [{"ref": "ref/gone.png", "cand": "changed/gone.png", "status": "missing",
                    "reason": "missing: no candidate, the reference is left as it is"}]}
    assert {name: _sha(changed / "ref" / name) for name in cands} == cands
    assert _sha(changed / "ref/gone.png") == before["gone.png"]
    assert [row[1] for row in _approvals(db_url)] == ["ref/a.png", "ref/added.png", "ref/sub/b.png"]
    assert {row[5] for row in _approvals(db_url)} == {"lead@studio"}
    assert not list((changed / "ref").rglob("*.approving"))

    again = _check(db_url, changed, "changed", "--threshold", "0.001", "--missing", "warn", "--json")
    assert again.exit_code == 0, again.output
    assert [(p["name"], p["status"], p["distance"]) for p in json.loads(again.stdout)["pairs"]] == [
        ("a.png", "done", pytest.approx(0.0, abs=1e-6)), ("added.png", "done", pytest.approx(0.0, abs=1e-6)),
        ("gone.png", "missing", None), ("sub/b.png", "done", pytest.approx(0.0, abs=1e-6)),
    ]


def test_approving_after_a_reference_changed_is_refused_and_changes_nothing(db_url: str, changed: Path) -> None:
    run = json.loads(_check(db_url, changed, "changed", "--threshold", "0.1", "--json").stdout)["run"]
    _save(changed / "ref/sub/b.png", _noise(99))  # someone re-rendered the baseline meanwhile
    files = {path: path.read_bytes() for path in sorted((changed / "ref").rglob("*.png"))}
    refused = _cli(db_url, changed, "approve", str(run), "--json")
    assert refused.exit_code == 2
    assert json.loads(refused.stdout) == {
        "error": f"run {run}: 1 file(s) changed since the run measured them, nothing approved: "
                 "ref/sub/b.png: the reference changed", "exit": 2, "run": run}
    assert {path: path.read_bytes() for path in sorted((changed / "ref").rglob("*.png"))} == files
    assert not (changed / "ref/added.png").exists() and not list((changed / "ref").rglob("*.approving"))
    assert _approvals(db_url) == []

    only = _cli(db_url, changed, "approve", str(run), "--only", "a*", "--json")  # the unchanged ones may go
    assert only.exit_code == 0, only.output
    assert [row["ref"] for row in json.loads(only.stdout)["approved"]] == ["ref/a.png", "ref/added.png"]
    unknown = _cli(db_url, changed, "approve", str(run + 1))
    assert (unknown.exit_code, unknown.stderr) == (2, f"Error: run {run + 1}: not found\n")
