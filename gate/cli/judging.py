"""`lpips-gate check | gate`: judging. `check` is the CI step (gate.runs.check); `gate` is the daemon
that judges every other run and keeps the webhook informed (gate.judging.daemon)."""

from __future__ import annotations

from pathlib import Path

import click

from gate.cli.runs import echo, exit_with_verdict, load_policies, progress_bar, summary_text
from gate.settings import Settings
from gate.vocabulary import MISSING_MODES, NETS, PRECISIONS, RESIZE_MODES

DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_INTERVAL_S = 10.0


@click.command()
@click.argument("ref_dir", type=click.Path(path_type=Path))
@click.argument("cand_dir", type=click.Path(path_type=Path))
@click.option("--suite", required=True, help="Suite name: its runs share alerts and the drift baseline.")
@click.option("--threshold", type=float, default=None, help="Distance above which a pair fails (overrides policies).")
@click.option(
    "--policies",
    "policies_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Policy file (.toml or .yaml): thresholds, feature limits, drift.",
)
@click.option("--json", "as_json", is_flag=True,
              help='Print the judged run as JSON; an outcome without a verdict as {"error", "exit": 2[, "run"]}.')
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a self-contained HTML report (images, heatmaps, per-layer bars).",
)
@click.option(
    "--junit",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write JUnit XML, one test case per pair.",
)
@click.option("--net", type=click.Choice(NETS), default=None, help="Backbone (default: LPIPS_GATE_NET).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Network precision (default: LPIPS_GATE_PRECISION); stored with each result.")
@click.option("--missing", type=click.Choice(MISSING_MODES), default="fail", show_default=True,
              help="What new frames (no reference) and missing ones (no candidate) do: fail the run, pass "
                   "it with a warning, or nothing.")
@click.option("--meta", "meta_items", multiple=True, metavar="KEY=VALUE",
              help="Stored with the run (commit, pipeline, author...), shown in the JSON, report, JUnit and "
                   "alerts; repeatable.")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default="none", show_default=True,
              help="Resize ref to cand's size, or cand to ref's, when they differ (as compare does).")
@click.option("--exposure", type=float, default=0.0, show_default=True,
              help="OpenEXR input: exposure in stops before clamping and the sRGB curve (as compare does).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the comparisons before giving up (exit 2).",
)
@click.pass_obj
def check(
    settings: Settings,
    ref_dir: Path,
    cand_dir: Path,
    suite: str,
    threshold: float | None,
    policies_file: Path | None,
    as_json: bool,
    report: Path | None,
    junit: Path | None,
    net: str | None,
    precision: str | None,
    missing: str,
    meta_items: tuple[str, ...],
    resize: str,
    exposure: float,
    timeout: float,
) -> None:
    """Compare CAND_DIR with REF_DIR, judge the run and exit 0 (pass), 1 (fail) or 2 (error, timeout).

    Submits like `submit` (with a broker, workers compute; without, this process does), waits like
    `wait`, then applies the policies: verdict, alerts, webhook."""
    from gate.logs import configure
    from gate.runs.check import CheckRequest
    from gate.runs.check import check as check_run
    from gate.runs.service import parse_meta

    request = CheckRequest(ref_dir, cand_dir, suite, threshold, load_policies(policies_file), net=net,
                           precision=precision, timeout=timeout, report=report, junit=junit,
                           missing=missing, meta=parse_meta(meta_items), resize=resize, exposure=exposure)
    configure(settings)
    with progress_bar("run") as progress:
        summary = check_run(settings, request, progress=progress)
    echo(as_json, summary, summary_text(summary))
    errors = [pair for pair in summary["pairs"] if pair["verdict"] == "error"]
    unjudged = [pair for pair in errors if pair["status"] == "done" and pair["distance"] is not None]
    if len(errors) > len(unjudged):
        click.echo(f"run {summary['run']}: {len(errors) - len(unjudged)} comparison(s) could not be scored", err=True)
    if unjudged:
        click.echo(f"run {summary['run']}: {len(unjudged)} comparison(s) could not be judged: {unjudged[0]['error']}",
                   err=True)
    exit_with_verdict(summary)


@click.command()
@click.option(
    "--policies",
    "policies_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Policy file (.toml or .yaml): thresholds, feature limits, drift, alert cooldown.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_INTERVAL_S,
    show_default=True,
    help="Seconds between passes.",
)
@click.option("--once", is_flag=True, help="One pass, then exit.")
@click.pass_obj
def gate(settings: Settings, policies_file: Path | None, interval: float, once: bool) -> None:
    """Judge every finished run and send alerts, until SIGTERM."""
    from gate.judging.daemon import Daemon
    from gate.logs import configure
    from gate.store.opening import open_store

    policies = load_policies(policies_file)
    configure(settings)
    with open_store(settings) as engine:
        Daemon(engine, policies, settings).serve(interval=interval, once=once)
