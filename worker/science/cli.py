"""Science commands of `lpips-gate`, registered as entry points: eval 2afc|jnd, train-heads, analyze,
export onnx. Settings arrive in ctx.obj; every known failure exits 2 with its message. The engine is
imported inside each command, so `lpips-gate --help` loads no torch."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from gate import vocabulary
from gate.errors import GateError

NETS = click.Choice(vocabulary.NETS)
DEVICES = click.Choice(vocabulary.DEVICES)
SCORE_NAME = {"2afc": "2AFC", "jnd": "mAP"}


@contextmanager
def usage_errors() -> Iterator[None]:
    """Bad data, missing weights or heads, bad values: a message and exit 2, never a traceback."""
    from worker import weights

    try:
        yield
    except (ValueError, weights.WeightsError, FileNotFoundError) as exc:  # DataError, TrainedHeadsError are ValueErrors
        raise GateError(str(exc)) from exc


@contextmanager
def progress(total: int, label: str) -> Iterator:
    """A progress bar on stderr when it is a terminal; otherwise nothing."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def _metric(settings, net, version, device, *, lin=True):
    from worker import engine

    model, weights_version = engine.build_model(settings, net=net, version=version, lin=lin)
    target = engine.resolve_device(device or settings.device)
    return model.to(target), weights_version, target


def _provenance(model, weights_version: str, version: str) -> dict:
    data = {"net": model.net, "version": version, "weights_version": weights_version}
    if not model.is_lpips:
        data["metric"] = f"non-LPIPS (lin={model.lin}, normalise={model.normalise}, reduction={model.reduction})"
    return data


def _evaluate(settings, kind, folder, net, version, no_lin, device, batch, as_json):
    from worker import images
    from worker.science import bapps
    from worker.science import evaluate as evaluation

    net, version = net or settings.net, version or settings.version
    with usage_errors():
        subsets = bapps.find_subsets(folder, kind)
        model, weights_version, target = _metric(settings, net, version, device, lin=not no_lin)
        with progress(sum(len(s) for s in subsets), f"eval {kind}") as update:
            result = evaluation.evaluate(model, subsets, batch=batch or settings.max_batch,
                                         max_pixels=settings.max_pixels, min_size=images.MIN_SIZE[net],
                                         device=target, progress=update)
    if as_json:
        click.echo(json.dumps({"subsets": result.subsets, "overall": result.overall, "n": result.n,
                               "kind": kind, "counts": result.counts,
                               **_provenance(model, weights_version, version)}))
        return
    width = max(len("overall"), *(len(name) for name in result.subsets))
    click.echo(f"{'subset':<{width}}  {'n':>7}  {SCORE_NAME[kind]:>7}")
    for name, value in result.subsets.items():
        click.echo(f"{name:<{width}}  {result.counts[name]:>7}  {value:>7.4f}")
    click.echo(f"{'overall':<{width}}  {result.n:>7}  {result.overall:>7.4f}")
    click.echo(", ".join(f"{k} {v}" for k, v in _provenance(model, weights_version, version).items()))


def metric_options(command):
    """--net, --version, --device, --batch: the metric every science command runs."""
    for option in reversed([
        click.option("--net", type=NETS, default=None, help="Backbone (default: settings, alex)."),
        click.option("--version", default=None, help="Heads: 0.1 (default), 0.0 or a trained name."),
        click.option("--device", type=DEVICES, default=None),
        click.option("--batch", type=click.IntRange(min=1), default=None,
                     help="Triplets, pairs or images per forward pass (default: settings.max_batch)."),
    ]):
        command = option(command)
    return command


@click.group("eval")
def eval_():
    """Agreement with human judgements on BAPPS-format data."""


@eval_.command("2afc")
@click.argument("folder", type=click.Path(path_type=Path))
@metric_options
@click.option("--no-lin", is_flag=True, help="Uncalibrated baseline: no linear heads (not LPIPS).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def eval_2afc(settings, folder, net, version, device, batch, no_lin, as_json):
    """2AFC score of FOLDER (ref/, p0/, p1/, judge/ in it or in each immediate subfolder): the mean
    fraction of people who agree with the metric; overall pools all triplets."""
    _evaluate(settings, "2afc", folder, net, version, no_lin, device, batch, as_json)


@eval_.command("jnd")
@click.argument("folder", type=click.Path(path_type=Path))
@metric_options
@click.option("--no-lin", is_flag=True, help="Uncalibrated baseline: no linear heads (not LPIPS).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def eval_jnd(settings, folder, net, version, device, batch, no_lin, as_json):
    """JND mAP of FOLDER (p0/, p1/, same/ in it or in each immediate subfolder): average precision of
    "same" ranked by increasing distance; overall pools all pairs."""
    _evaluate(settings, "jnd", folder, net, version, no_lin, device, batch, as_json)


@click.command("train-heads")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--net", type=NETS, default=None, help="Backbone (default: settings, alex).")
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--out", "name", default=None, help="Heads version name (default: data-<fingerprint>).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-2, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=50, show_default=True, help="Triplets per step.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing heads version of that name.")
@click.option("--device", type=DEVICES, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def train_heads(settings, folder, net, epochs, name, lr, batch, seed, overwrite, device, as_json):
    """Learn LPIPS linear heads on 2AFC data in FOLDER (trunk frozen) and save them as a heads version."""
    from worker import images
    from worker.science import bapps
    from worker.science import train as training
    from worker.science import trained as saved_heads

    net = net or settings.net
    with usage_errors():
        subsets = bapps.find_subsets(folder, "2afc")
        data_fingerprint = bapps.fingerprint(folder, subsets)
        name = name or f"data-{data_fingerprint[:12]}"
        target_path = saved_heads.heads_path(settings.weights_dir, net, name)
        if target_path.exists() and not overwrite:
            raise GateError(f"{target_path} exists; pass --overwrite to replace it")
        model, weights_version, target = _metric(settings, net, "0.1", device, lin=False)
        with progress(sum(len(s) for s in subsets), "features") as update:
            means = training.layer_means(model, subsets, batch=settings.max_batch, max_pixels=settings.max_pixels,
                                min_size=images.MIN_SIZE[net], device=target, progress=update)
        with progress(epochs, "training") as update:
            trained = training.train(means, net=net, epochs=epochs, lr=lr, batch=batch, seed=seed,
                            on_epoch=lambda epoch, loss: update(1))
        info = {"weights_version": weights_version, "data_fingerprint": data_fingerprint, "triplets": len(means),
                "epochs": epochs, "lr": lr, "batch": batch, "seed": seed, "input_scaling": "v0.1",
                "train_2afc_before": trained.score_before, "train_2afc_after": trained.score_after,
                "final_loss": trained.losses[-1]}
        path = saved_heads.save_trained(settings.weights_dir, net, name, trained.state, info, overwrite=overwrite)
    sha = saved_heads.trained_metadata(settings.weights_dir, net, name)["sha256"]
    if as_json:
        click.echo(json.dumps({"name": name, "net": net, "path": str(path), "sha256": sha, **info}))
        return
    click.echo(f"heads {name!r} for {net} saved to {path}")
    click.echo(f"2AFC on the training data: {trained.score_before:.4f} (uncalibrated) -> "
               f"{trained.score_after:.4f} (trained); {len(means)} triplets, {epochs} epochs, "
               f"final loss {trained.losses[-1]:.4f}")
    click.echo(f"sha256 {sha}; data fingerprint {data_fingerprint}")


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@metric_options
@click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write an HTML report with inline SVG charts.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def analyze(settings, folder, net, version, device, batch, report, as_json):
    """Per-layer feature diversity, stability under small augmentations and discriminability of
    same vs different pairs, on the images in FOLDER."""
    from worker import images
    from worker.science import analyze as analysis

    net, version = net or settings.net, version or settings.version
    with usage_errors():
        named = analysis.read_folder(folder, max_pixels=settings.max_pixels, min_size=images.MIN_SIZE[net])
        model, weights_version, target = _metric(settings, net, version, device)
        with progress(len(named), "analyze") as update:
            result = analysis.analyse(model, named, batch=batch or settings.max_batch, device=target, progress=update)
    provenance = _provenance(model, weights_version, version)
    if report is not None:
        try:
            report.write_text(analysis.html_report(result, title=f"LPIPS feature analysis: {folder.name}",
                                                   provenance=provenance))
        except OSError as exc:
            raise GateError(f"{report}: cannot write ({exc.strerror})") from exc
    if as_json:
        click.echo(json.dumps({**result.to_json(), **provenance}))
        return
    augs = list(analysis.AUGMENTATIONS)
    click.echo(f"{'layer':<12} {'dead':>5} {'diversity':>9} " + " ".join(f"{a:>10}" for a in augs) + f" {'AUC':>7}")
    for layer in result.layers:
        diversity = "-" if layer.diversity is None else f"{layer.diversity:.4f}"
        click.echo(f"{layer.name:<12} {layer.dead_channels:>5} {diversity:>9} "
                   + " ".join(f"{layer.stability[a]:>10.4f}" for a in augs) + f" {layer.auc:>7.4f}")
    click.echo(f"total-distance AUC {result.total_auc:.4f} ({result.images} images, {result.same_pairs} same "
               f"pairs, {result.different_pairs} different pairs)")


@click.group()
def export():
    """Export the metric for other runtimes."""


@export.command("onnx")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--net", type=NETS, default=None, help="Backbone (default: settings, alex).")
@click.option("--version", default=None, help="Heads: 0.1 (default), 0.0 or a trained name.")
@click.option("--opset", type=click.IntRange(min=18), default=18, show_default=True)
@click.pass_obj
def export_onnx_command(settings, out, net, version, opset):
    """The whole metric as ONNX: inputs in0, in1 (N,3,H,W) float32 in [-1, 1], output distance (N,);
    batch, height and width are dynamic."""
    from worker import images
    from worker.science.export import export_onnx

    net, version = net or settings.net, version or settings.version
    with usage_errors():
        model, weights_version, _ = _metric(settings, net, version, "cpu")
        metadata = {"producer": "lpips-gate", **_provenance(model, weights_version, version),
                    "inputs": "in0, in1: float32 (N,3,H,W) RGB in [-1, 1], equal shapes",
                    "output": "distance: float32 (N,)", "min_size": str(images.MIN_SIZE[net])}
        try:
            export_onnx(model, out, metadata=metadata, opset=opset)
        except OSError as exc:
            raise GateError(f"{out}: cannot write ({exc.strerror})") from exc
    click.echo(f"wrote {out}: {net} version {version}, weights {weights_version}; inputs in0, in1 (N,3,H,W) "
               f"in [-1, 1] with H, W >= {images.MIN_SIZE[net]}; output distance (N,)")
