"""The science commands end to end on generated BAPPS-format data, with real weights: eval 2afc/jnd agree
with the formulas applied to the engine's own distances, train-heads feeds eval and export, analyze writes
its report, and bad input exits 2 with a message."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import lpips
import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner

from gate.cli import main
from gate.settings import Settings
from worker.engine import Engine, build_model
from worker.health import FIXTURES  # the LPIPS authors' examples, shipped with the worker
from worker.images import load_image
from worker.science import synthetic
from worker.science.bapps import find_subsets, read_judgement
from worker.science.evaluate import two_afc


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """The provisioned real weights, copied so trained heads land in a folder of this module's own."""
    folder = tmp_path_factory.mktemp("weights")
    shutil.copytree(Settings().weights_dir, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("heads"))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bapps")
    synthetic.write_2afc(root / "2afc" / "val" / "mixed", n=48, seed=22)
    synthetic.write_2afc(root / "2afc" / "val" / "blur", n=16, seed=21, kinds=("blur",))
    synthetic.write_2afc(root / "2afc" / "train", n=96, seed=23)
    synthetic.write_jnd(root / "jnd" / "val" / "mixed", n=24, seed=24)
    (root / "images").mkdir()
    for i in range(6):
        synthetic.write_png(root / "images" / f"{i}.png", synthetic.reference(np.random.default_rng(i), 64))
    return root


@pytest.fixture(scope="module")
def cli(weights_dir):
    runner = CliRunner(env={"LPIPS_GATE_WEIGHTS_DIR": str(weights_dir), "LPIPS_GATE_MAX_BATCH": "7"})
    return lambda *args: runner.invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def engine_distances(weights_dir):
    engine = Engine.from_settings(Settings(weights_dir=weights_dir), net="alex", device="cpu")
    return lambda pairs: np.array([o.distance for o in engine.compare_files(pairs)])


@pytest.fixture(scope="module")
def trained(cli, data):
    done = cli("train-heads", data / "2afc" / "train", "--net", "alex", "--out", "syn", "--epochs", "50", "--json")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def val_2afc(cli, data) -> dict:
    done = cli("eval", "2afc", data / "2afc" / "val", "--json")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def judgements(subset) -> np.ndarray:
    return np.array([read_judgement(subset.files[s][-1]) for s in subset.stems])


def test_eval_2afc_equals_the_formula_on_the_engines_distances(val_2afc, data, engine_distances, weights_dir):
    result = val_2afc
    all_scores = []
    for subset in find_subsets(data / "2afc" / "val", "2afc"):
        files = [subset.files[s] for s in subset.stems]
        d0 = engine_distances([(f[0], f[1]) for f in files])
        d1 = engine_distances([(f[0], f[2]) for f in files])
        scores = two_afc(d0, d1, judgements(subset))
        assert result["subsets"][subset.name] == pytest.approx(scores.mean(), abs=1e-12)
        all_scores.extend(scores)
    assert result["overall"] == pytest.approx(np.mean(all_scores), abs=1e-12)
    trunk = build_model(Settings(weights_dir=weights_dir), net="alex", lin=False)[1]
    assert {k: result[k] for k in ("n", "counts", "kind", "net", "version", "weights_version")} == {
        "n": 64, "counts": {"blur": 16, "mixed": 48}, "kind": "2afc", "net": "alex", "version": "0.1",
        "weights_version": trunk}
    assert list(result["subsets"]) == ["blur", "mixed"] and "metric" not in result
    assert 0.5 < result["overall"] < 1.0


def test_eval_2afc_prints_a_table(cli, data, val_2afc):
    done = cli("eval", "2afc", data / "2afc" / "val")
    assert done.exit_code == 0, done.output
    as_json = val_2afc
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["subset", "n", "2AFC"]
    assert lines[1].split() == ["blur", "16", f"{as_json['subsets']['blur']:.4f}"]
    assert lines[2].split() == ["mixed", "48", f"{as_json['subsets']['mixed']:.4f}"]
    assert lines[3].split() == ["overall", "64", f"{as_json['overall']:.4f}"]
    assert lines[4] == f"net alex, version 0.1, weights_version {as_json['weights_version']}"


def test_eval_jnd_equals_the_lpips_repository_formula(cli, data, engine_distances):
    done = cli("eval", "jnd", data / "jnd" / "val", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    [subset] = find_subsets(data / "jnd" / "val", "jnd")
    ds = engine_distances([(subset.files[s][0], subset.files[s][1]) for s in subset.stems])
    sames = judgements(subset)
    order = np.argsort(ds)  # as lpips.trainer.score_jnd_dataset
    tps, fps = np.cumsum(sames[order]), np.cumsum(1 - sames[order])
    expected = lpips.voc_ap(tps / (tps + (np.sum(sames) - tps)), tps / (tps + fps))
    assert result == {"subsets": {"mixed": pytest.approx(expected, abs=1e-12)},
                      "overall": pytest.approx(expected, abs=1e-12), "n": 24, "kind": "jnd",
                      "counts": {"mixed": 24}, "net": "alex", "version": "0.1",
                      "weights_version": result["weights_version"]}
    assert 0.5 < expected < 1.0


def test_uncalibrated_baseline_is_labelled(cli, data):
    result = json.loads(cli("eval", "jnd", data / "jnd" / "val", "--no-lin", "--json").stdout)
    assert result["metric"] == "non-LPIPS (lin=False, normalise=l2, reduction=mean)"


def test_trained_heads_beat_the_baseline_through_the_cli(cli, data, trained, weights_dir):
    assert trained["name"] == "syn" and trained["net"] == "alex" and trained["triplets"] == 96
    assert Path(trained["path"]) == weights_dir / "heads" / "alex-syn.safetensors"
    assert trained["train_2afc_after"] > trained["train_2afc_before"]
    val = data / "2afc" / "val" / "mixed"
    calibrated = json.loads(cli("eval", "2afc", val, "--version", "syn", "--json").stdout)
    baseline = json.loads(cli("eval", "2afc", val, "--no-lin", "--json").stdout)
    assert calibrated["overall"] > baseline["overall"] + 0.05, (calibrated, baseline)
    assert calibrated["weights_version"] == f"{trained['weights_version']}+heads:{trained['sha256'][:12]}"


def test_train_heads_text_output_and_refusal_to_overwrite(cli, data, trained):
    again = cli("train-heads", data / "2afc" / "train", "--out", "syn")
    assert again.exit_code == 2
    assert again.stderr == f"Error: {trained['path']} exists; pass --overwrite to replace it\n"
    fresh = cli("train-heads", data / "2afc" / "val", "--epochs", "3")
    assert fresh.exit_code == 0, fresh.output
    lines = fresh.stdout.splitlines()
    assert lines[0].startswith("heads 'data-") and " for alex saved to " in lines[0]
    assert lines[1].startswith("2AFC on the training data: ") and "; 64 triplets, 3 epochs, final loss " in lines[1]


def test_export_a_trained_version_and_run_it_in_onnxruntime(cli, trained, tmp_path, weights_dir):
    out = tmp_path / "syn.onnx"
    done = cli("export", "onnx", "--net", "alex", "--version", "syn", out)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"wrote {out}: alex version syn, weights ")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["weights_version"] == f"{trained['weights_version']}+heads:{trained['sha256'][:12]}"
    assert props["version"] == "syn" and props["min_size"] == "31"
    model, _ = build_model(Settings(weights_dir=weights_dir), net="alex", version="syn")
    ref, p0 = (load_image(FIXTURES / f"ex_{n}.png", max_pixels=10**7)[None] for n in ("ref", "p0"))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"in0": ref.numpy(), "in1": p0.numpy()})[0]
    assert np.abs(got - model(ref, p0).numpy()).max() <= 1e-4


def test_analyze_writes_json_and_an_html_report(cli, data, tmp_path):
    report = tmp_path / "report.html"
    done = cli("analyze", data / "images", "--report", report, "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert (result["images"], result["same_pairs"], result["different_pairs"]) == (6, 12, 6)
    assert [layer["name"] for layer in result["layers"]] == [f"features.{i}" for i in (1, 4, 7, 9, 11)]
    assert result["net"] == "alex" and result["total_auc"] == 1.0
    page = report.read_text()
    assert page.count("<svg") == 3 and "LPIPS feature analysis: images" in page
    table = cli("analyze", data / "images").stdout.splitlines()
    assert table[0].split() == ["layer", "dead", "diversity", "shift", "brightness", "AUC"]
    assert table[1].split()[0] == "features.1" and len(table) == 7


@pytest.mark.parametrize("args, message", [
    (("eval", "2afc", "{data}/missing"), "{data}/missing: not a folder"),
    (("eval", "2afc", "{data}/jnd/val"),
     "{data}/jnd/val/mixed: incomplete 2afc subset, missing ref/, judge/"),
    (("eval", "jnd", "{data}/jnd/val", "--version", "0.2"),
     ("no heads version '0.2' for net 'alex' in {weights}/heads (shipped versions: 0.0, 0.1; "
      "train one with `lpips-gate train-heads`)")),
    (("train-heads", "{data}/2afc/train", "--out", "../x"),
     "heads name '../x' is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
    (("analyze", "{data}/2afc"), "{data}/2afc: no images (PNG, JPEG, WebP, TIFF, BMP or OpenEXR)"),
])
def test_bad_input_exits_2_with_a_message(cli, data, weights_dir, args, message):
    done = cli(*(a.format(data=data) for a in args))
    assert done.exit_code == 2, done.output
    assert done.stderr == f"Error: {message.format(data=data, weights=weights_dir)}\n"


def test_missing_weights_are_named(data, tmp_path):
    done = CliRunner(env={"LPIPS_GATE_WEIGHTS_DIR": str(tmp_path)}).invoke(
        main, ["eval", "2afc", str(data / "2afc" / "val")])
    assert done.exit_code == 2
    assert done.stderr == (f"Error: no weights for 'alex' in {tmp_path}: run `lpips-gate weights fetch --net alex` "
                           "or `lpips-gate weights import FILE --net alex`\n")


def test_progress_bar_goes_to_a_terminal_stderr(data, weights_dir):
    """A real pseudo-terminal on stderr: the bar is drawn there, stdout keeps only the table."""
    leader, follower = pty.openpty()
    env = {**os.environ, "LPIPS_GATE_WEIGHTS_DIR": str(weights_dir)}
    done = subprocess.run([sys.executable, "-m", "gate.cli", "eval", "jnd", str(data / "jnd" / "val")],
                          stdout=subprocess.PIPE, stderr=follower, env=env, text=True, timeout=300, check=False)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert done.returncode == 0
    assert b"eval jnd" in drawn and b"100%" in drawn
    assert done.stdout.splitlines()[0].split() == ["subset", "n", "mAP"]
