"""Judging by the spatial scores, the pixel guards and feature quality, end to end: `check` on real images
with the real engine (in-process), and runs written to the store as a worker writes them; a fallback
backbone judged on its own scale; masks from the policy file handed to the workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from gate.alerts import store as alert_store
from gate.cli import main
from gate.judging.policy import Policy, PolicySet, SuitePolicies
from gate.judging.verdict import judge_run
from gate.settings import Settings
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from gate.store.models import Run
from tests.support.faults import Faults, injected

SIZE = 64
FALLBACK_ERROR = "scored by fallback vgg: no threshold declared or calibrated for vgg"


def _noise(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _nudged(pixels: np.ndarray, seed: int) -> np.ndarray:
    """The image with +-8 of noise: another render of the same frame."""
    noise = np.random.default_rng(seed).integers(-8, 9, pixels.shape)
    return np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)


def _save(folder: Path, name: str, pixels: np.ndarray) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """ref/: two textures; new/: a.png re-rendered, b.png all black; ok/: both re-rendered."""
    root = tmp_path / "images"
    for name, seed in (("a.png", 1), ("b.png", 2)):
        _save(root / "ref", name, _noise(seed))
        _save(root / "ok", name, _nudged(_noise(seed), seed + 10))
    _save(root / "new", "a.png", _nudged(_noise(1), 11))
    _save(root / "new", "b.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    return root


def _check(db_url: str, root: Path, cand: str, *args: str) -> Result:
    env = {"LPIPS_GATE_DATABASE_URL": db_url, "LPIPS_GATE_IMAGE_ROOT": str(root), "LPIPS_GATE_BROKER_URL": None,
           "LPIPS_GATE_WEBHOOK_URL": None, "LPIPS_GATE_DEVICE": "cpu"}
    return CliRunner().invoke(main, ["check", str(root / "ref"), str(root / cand), "--suite", "smoke", *args], env=env)


def _alerts(db_url: str, rule: str) -> list[tuple]:
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            return [(a.state, a.labels, a.value, a.threshold, a.annotations)
                    for a in alert_store.list_alerts(session) if a.rule == rule]
    finally:
        engine.dispose()


def _run(db_url: str, run_id: int = 1) -> Run:
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            run = repo.get_run(session, run_id=run_id)
            session.expunge(run)
            return run
    finally:
        engine.dispose()


# --- feature quality (needs the workers' spatial_std: helper A's statistics and migration 0005) ------


def test_an_all_black_candidate_opens_a_flatness_alert_naming_the_layer(db_url: str, images: Path) -> None:
    """Measured with alex on these 64x64 textures: a black frame keeps 0.20 of the reference's spatial
    std at features.1 and 0.23 at features.7 (the padded border), the re-render 0.99-1.01 everywhere."""
    result = _check(db_url, images, "new", "--threshold", "0.1", "--json")
    assert result.exit_code == 1, result.output
    flat = _alerts(db_url, "flatness")
    assert [labels["layer"] for _state, labels, *_ in flat] == ["features.1", "features.7"]
    for state, labels, value, threshold, notes in flat:
        assert (state, labels["side"], labels["suite"], labels["net"]) == ("open", "cand", "smoke", "alex")
        assert value < threshold == 0.25 and notes["image"] == "new/b.png"
    passing = _check(db_url, images, "ok", "--threshold", "0.1", "--json")
    assert passing.exit_code == 0, passing.output
    assert [state for state, *_ in _alerts(db_url, "flatness")] == ["resolved", "resolved"]


# --- a fallback backbone on its own scale ------------------------------------------------------------


def test_a_pair_the_fallback_scored_without_its_own_threshold_is_an_error_never_a_pass(sqlite_url: str,
                                                                                      images: Path) -> None:
    """alex cannot load: vgg scores every pair, and --threshold is on alex's scale."""
    with injected(Faults(broken_primary=True)):
        result = CliRunner().invoke(main, ["check", str(images / "ref"), str(images / "ok"), "--suite", "smoke",
                                           "--threshold", "0.5", "--json"],
                                    env={"LPIPS_GATE_DATABASE_URL": sqlite_url, "LPIPS_GATE_IMAGE_ROOT": str(images),
                                         "LPIPS_GATE_DEVICE": "cpu", "LPIPS_GATE_BROKER_URL": None,
                                         "LPIPS_GATE_WEBHOOK_URL": None})
    assert result.exit_code == 2, result.output
    summary = json.loads(result.stdout)
    assert summary["verdict"] == "error"
    assert [(p["status"], p["verdict"], p["error"], p["reasons"]) for p in summary["pairs"]] == [
        ("done", "error", FALLBACK_ERROR, [FALLBACK_ERROR])
    ] * 2
    assert all(0 < pair["distance"] < 0.5 for pair in summary["pairs"])  # scored, and below the threshold
    assert result.stderr.splitlines()[-1] == f"run 1: 2 comparison(s) could not be judged: {FALLBACK_ERROR}"
    engine = make_engine(sqlite_url)
    with session_scope(engine) as session:
        assert {(c.net, c.status) for c in repo.list_comparisons(session, run_id=1)} == {("vgg", "done")}
    engine.dispose()


def test_a_fallback_pair_is_judged_by_the_threshold_declared_for_its_net(sqlite_url: str, images: Path,
                                                                        tmp_path: Path) -> None:
    policy = tmp_path / "gate.toml"
    policy.write_text("[suite.smoke]\nmax_distance = 0.001\n[suite.smoke.nets.vgg]\nmax_distance = 0.5\n")
    with injected(Faults(broken_primary=True)):
        result = CliRunner().invoke(main, ["check", str(images / "ref"), str(images / "new"), "--suite", "smoke",
                                           "--policies", str(policy), "--json"],
                                    env={"LPIPS_GATE_DATABASE_URL": sqlite_url, "LPIPS_GATE_IMAGE_ROOT": str(images),
                                         "LPIPS_GATE_DEVICE": "cpu", "LPIPS_GATE_BROKER_URL": None,
                                         "LPIPS_GATE_WEBHOOK_URL": None})
    assert result.exit_code == 1, result.output
    pairs = json.loads(result.stdout)["pairs"]
    assert [(p["verdict"], p["reasons"][:1]) for p in pairs] == [("pass", []), ("fail", ["distance"])]  # on 0.5
    assert pairs[0]["distance"] > 0.001  # alex's limit would have failed it


# --- masks and per-image rules in the policy file ------------------------------------------------------


def test_check_hands_the_policy_masks_to_the_workers_rooted_at_the_image_root(sqlite_url: str, images: Path,
                                                                             tmp_path: Path) -> None:
    _save(images / "masks", "ui.png", np.zeros((SIZE, SIZE), np.uint8))
    policy = tmp_path / "gate.toml"
    policy.write_text(
        "[suite.smoke]\nmax_distance = 2.0\nregion_px = 16\narea_level = 0.5\n"
        "[[suite.smoke.images]]\nglob = 'a*'\nignore = [[0, 0, 8, 8]]\nmask = 'masks/ui.png'\n"
        "[[suite.smoke.images]]\nglob = 'b.png'\nmax_region = 3.0\n"  # an override hides nothing: no mask
    )
    result = _check(sqlite_url, images, "ok", "--policies", str(policy))
    assert result.exit_code == 0, result.output
    assert _run(sqlite_url).options == {
        "maps": False, "region_px": 16, "area_level": 0.5, "cand_dir": "ok", "missing": "fail",
        "masks": [{"glob": "ok/a*", "rects": [[0, 0, 8, 8]], "mask": "masks/ui.png"}],
    }


def test_a_missing_mask_image_is_refused_before_anything_is_stored(sqlite_url: str, images: Path,
                                                                  tmp_path: Path) -> None:
    policy = tmp_path / "gate.toml"
    policy.write_text("[suite.smoke]\nmax_distance = 0.1\n[[suite.smoke.images]]\nglob = '*'\nmask = 'ui.png'\n")
    result = _check(sqlite_url, images, "ok", "--policies", str(policy))
    assert (result.exit_code, result.stderr) == (
        2, f"Error: --policies: suite.smoke.images.0.mask: ui.png: no such file under the image root {images}\n",
    )
    engine = make_engine(sqlite_url)
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 0
    engine.dispose()


def test_a_mask_hides_damage_inside_it_and_not_outside(sqlite_url: str, tmp_path: Path) -> None:
    """Needs the workers' masks and scores (helper A). A 16px black square on a 128px texture, inside
    the ignored 64px corner, then outside it. Measured with alex: the mean over the unmasked map is
    0.03 inside (the distance 0.13 either way), 0.18 outside; the worst 16px region 0.27 (the
    damage's reach past the mask) and 0.95."""
    root = tmp_path / "images"
    reference = _noise(3, 128)
    _save(root / "ref", "shots/ui_1.png", reference)
    for folder, (x, y) in (("inside", (24, 24)), ("outside", (88, 88))):
        damaged = _nudged(reference, 4)
        damaged[y : y + 16, x : x + 16] = 0
        _save(root / folder, "shots/ui_1.png", damaged)
    policy = tmp_path / "gate.toml"
    policy.write_text("[suite.smoke]\nmax_distance = 0.1\nmax_region = 0.5\nregion_px = 16\n"
                      "[[suite.smoke.images]]\nglob = 'shots/ui_*'\nignore = [[0, 0, 64, 64]]\n")
    inside = _check(sqlite_url, root, "inside", "--policies", str(policy), "--json")
    assert inside.exit_code == 0, inside.output
    outside = _check(sqlite_url, root, "outside", "--policies", str(policy), "--json")
    assert outside.exit_code == 1, outside.output
    [pair] = json.loads(outside.stdout)["pairs"]
    assert pair["reasons"] == ["distance", "region"]
    x, y, w, h = pair["where"]
    assert x < 88 + 16 and 88 < x + w and y < 88 + 16 and 88 < y + h  # the region found overlaps the damage


# --- what a run shows of its scores (needs the columns of migration 0005) --------------------------------


def _scored_run(session_factory: sessionmaker, scores: list[dict], regions: list[dict]) -> int:
    """A run of alex pairs p{i}.png -> c{i}.png stored as a worker stores them, with its scores."""
    with session_factory.begin() as session:
        pairs = [(f"p{i}.png", f"c{i}.png") for i in range(len(scores))]
        run = repo.create_run(session, suite_name="render", pairs=pairs, net="alex", version="0.1", precision="fp32",
                              policy=SuitePolicies(base=Policy(max_distance=0.1, max_fireflies=2)).model_dump(
                                  mode="json"))
        for comparison, score, region in zip(repo.list_comparisons(session, run_id=run.id), scores, regions,
                                             strict=True):
            repo.record_result(session, comparison_id=comparison.id, distance=score["mean"], net="alex",
                               weights_version="w1", precision="fp32", layers=[])
            comparison.scores, comparison.regions = score, region
        return run.id


def test_the_judged_run_shows_scores_reasons_and_where_and_alerts_say_where(session_factory, db_url) -> None:
    clean = {"mean": 0.02, "region": 0.2, "area": 0.0, "fireflies": 0.0, "flat": 0.0, "nonfinite": 0.0,
             "outliers": 0.0}
    hot = {**clean, "mean": 0.03, "fireflies": 12.0}
    black = {**clean, "mean": 0.9, "region": 1.4, "area": 0.8, "flat": 1.0}
    run_id = _scored_run(session_factory, [clean, hot, black],
                         [{"region": [0, 0, 32, 32]}, {"region": [8, 8, 32, 32], "fireflies": [20, 30, 9, 7]},
                          {"region": [16, 0, 32, 32]}])
    settings = Settings(database_url=db_url)
    summary = judge_run(session_factory.kw["bind"], run_id=run_id, policies=None, settings=settings)
    assert summary["verdict"] == "fail"
    assert [(p["verdict"], p["scores"], p["reasons"], p["where"]) for p in summary["pairs"]] == [
        ("pass", clean, [], None),
        ("fail", hot, ["fireflies"], [20, 30, 9, 7]),
        ("fail", black, ["distance", "flat"], None),  # whole-frame findings
    ]
    with session_factory() as session:
        alerts = {(a.rule, a.labels.get("score")): (a.state, a.value, a.threshold, a.annotations)
                  for a in alert_store.list_alerts(session)}
    assert alerts == {
        ("distance", None): ("open", 0.9, 0.1, {"worst_pair": "p2.png -> c2.png", "failed": "1 of 3"}),
        ("score", "fireflies"): ("open", 12.0, 2.0, {"worst_pair": "p1.png -> c1.png", "failed": "1 of 3",
                                                     "where": "20,30,9,7"}),
        ("score", "flat"): ("open", 1.0, 0.0, {"worst_pair": "p2.png -> c2.png", "failed": "1 of 3"}),
    }
    other = PolicySet()  # `wait` and the daemon show the same judgement, read back from the recorded policy
    assert judge_run(session_factory.kw["bind"], run_id=run_id, policies=other, settings=settings) == summary
