"""`lpips-gate check | alerts | gate`: the judging side of the gate.

`check` is the CI step: submit two folders, wait for the comparisons, judge the run and exit 0 on
pass, 1 on fail, 2 on error. `gate` is the daemon that judges every other run and keeps the webhook
informed; `alerts` lists what it raised. The store, SQLAlchemy and the rules are imported when a
command runs, so other commands do not pay for them."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from gate.commands.service import (
    NETS,
    PRECISIONS,
    failure,
    open_store,
    poll_until_finished,
    submit_run,
    summary_text,
    validate_options,
)
from gate.settings import Settings

EXIT_CODES = {"pass": 0, "fail": 1, "error": 2}
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_INTERVAL_S = 10.0
REPORT_IMAGE_PX = 704  # twice the report's display width: sharp on high-density screens


# --- check -------------------------------------------------------------------------------------


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
@click.option("--json", "as_json", is_flag=True, help="Print the judged run as JSON.")
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
    timeout: float,
) -> None:
    """Compare CAND_DIR with REF_DIR, judge the run and exit 0 (pass), 1 (fail) or 2 (error).

    Submits like `submit` (with a broker, workers compute; without, this process does), waits like
    `wait`, then applies the policies: verdict, alerts, webhook."""
    from gate.logs import configure

    validate_options(suite, threshold)
    _check_writable(report=report, junit=junit)
    policies = _load_policies(policies_file)
    _require_max_distance(policies, suite=suite, net=net or settings.net, threshold=threshold)
    configure(settings)
    run_id, _ids = submit_run(
        settings, ref_dir, cand_dir, suite=suite, threshold=threshold, net=net, version=None, precision=precision,
        maps=report is not None,
    )
    with open_store(settings) as engine:
        poll_until_finished(engine, run_id, timeout=timeout)
        summary, report_run = _judge(engine, run_id, policies, settings, for_report=bool(report or junit))
    _write_artefacts(report_run, report=report, junit=junit)
    click.echo(json.dumps(summary) if as_json else summary_text(summary))
    if summary["verdict"] == "error":
        failed = sum(pair["status"] == "error" for pair in summary["pairs"])
        click.echo(f"run {run_id}: {failed} comparison(s) could not be scored", err=True)
    click.get_current_context().exit(EXIT_CODES[summary["verdict"]])


def _judge(
    engine: Any, run_id: int, policies: Any, settings: Settings, *, for_report: bool
) -> tuple[dict, dict | None]:
    """The judged run, and what the report and JUnit show of it when asked for."""
    from gate.store import session_scope
    from gate.verdict import EvaluationError, judge_run

    try:
        summary = judge_run(engine, run_id=run_id, policies=policies, settings=settings)
    except EvaluationError as exc:
        raise failure(str(exc)) from exc
    if not for_report:
        return summary, None
    with session_scope(engine) as session:
        return summary, _report_run(session, summary, policies, settings.image_root)


def _check_writable(**outputs: Path | None) -> None:
    """Refuse before computing anything when a report could not be written afterwards."""
    for option, path in outputs.items():
        if path is not None and not path.absolute().parent.is_dir():
            raise failure(f"--{option}: {path}: its folder does not exist")


def _load_policies(path: Path | None) -> Any:
    from gate.policy import PolicyError, PolicySet, load_policies

    if path is None:
        return PolicySet()
    try:
        return load_policies(path)
    except PolicyError as exc:
        raise failure(f"--policies: {exc}") from exc


def _require_max_distance(policies: Any, *, suite: str, net: str, threshold: float | None) -> None:
    """Refuse before computing anything when no threshold could judge the suite's pairs."""
    from gate.policy import policy_for

    if threshold is not None:
        return
    suite_policies = policies.suites.get(suite)
    versioned = suite_policies.nets.values() if suite_policies else ()
    if policy_for(policies, suite=suite, net=net, weights_version="").max_distance is None and not any(
        policy.max_distance is not None for policy in versioned
    ):
        raise failure(f"--threshold: none given and the policies set no max_distance for suite {suite!r}")


def _report_run(session: Any, summary: dict[str, Any], policies: Any, image_root: Path) -> dict[str, Any]:
    """The judged run with what the report shows: images, heatmaps and per-layer distances."""
    from gate.store import repository as repo

    run = repo.get_run(session, run_id=summary["run"])
    comparisons = {(c.ref, c.cand): c for c in repo.list_comparisons(session, run_id=run.id)}
    threshold = _shown_threshold(run, comparisons.values(), policies)
    layers: dict[int, list[dict[str, Any]]] = {}
    for row in repo.layer_metrics(session, run_id=run.id):
        layers.setdefault(row.comparison_id, []).append({"name": row.name, "distance": row.distance})
    pairs = []
    for pair in summary["pairs"]:
        comparison = comparisons[(pair["ref"], pair["cand"])]
        pairs.append(
            {
                **pair,
                "ref_png": _report_png(image_root / pair["ref"]),
                "cand_png": _report_png(image_root / pair["cand"]),
                "heatmap_png": comparison.heatmap_png,
                "layers": layers.get(comparison.id, []),
            }
        )
    return {**summary, "threshold": threshold, "pairs": pairs}


def _shown_threshold(run: Any, comparisons: Any, policies: Any) -> float | None:
    """The run's threshold, else the policy's for the backbone that scored its first pair."""
    from gate.verdict import policy_lookup

    scored = [c for c in comparisons if c.net is not None and c.weights_version is not None]
    if run.threshold is not None or not scored:
        return run.threshold
    lookup = policy_lookup(policies, suite=run.suite.name, threshold=None)
    return lookup(scored[0].net, scored[0].weights_version).max_distance


def _report_png(path: Path) -> bytes | None:
    """A PNG thumbnail of an input image, or None when it cannot be shown (then the report says so).
    Pillow comes with the engine; without it only PNG inputs are embedded, as they are."""
    try:
        from PIL import Image
    except ImportError:
        data = path.read_bytes() if path.is_file() else b""
        return data if data.startswith(b"\x89PNG\r\n\x1a\n") else None
    try:
        with Image.open(path) as image:
            image.thumbnail((REPORT_IMAGE_PX, REPORT_IMAGE_PX))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "PNG")
    except (OSError, ValueError):
        return None
    return buffer.getvalue()


def _write_artefacts(report_run: dict[str, Any] | None, *, report: Path | None, junit: Path | None) -> None:
    from gate.junit import render_junit
    from gate.report import render_html

    for path, render in ((report, render_html), (junit, render_junit)):
        if path is None:
            continue
        try:
            path.write_text(render(report_run), encoding="utf-8")
        except OSError as exc:
            raise failure(f"{path}: cannot write: {exc.strerror}") from exc


# --- alerts ------------------------------------------------------------------------------------


@click.command()
@click.option("--suite", default=None, help="Only this suite's alerts.")
@click.option("--open", "open_only", is_flag=True, help="Only alerts still open.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, oldest first.")
@click.pass_obj
def alerts(settings: Settings, suite: str | None, open_only: bool, as_json: bool) -> None:
    """List the alerts the gate raised, oldest first."""
    from gate.store import repository as repo
    from gate.store import session_scope

    with open_store(settings) as engine, session_scope(engine) as session:
        rows = [alert_row(alert) for alert in repo.list_alerts(session, suite_name=suite, open_only=open_only)]
    click.echo(json.dumps(rows) if as_json else "\n".join(_alert_line(row) for row in rows))


def alert_row(alert: Any) -> dict[str, Any]:
    return {
        "rule": alert.rule,
        "suite": alert.suite.name,
        "state": alert.state,
        "labels": alert.labels,
        "value": alert.value,
        "threshold": alert.threshold,
        "opened_at": _iso(alert.opened_at),
        "resolved_at": _iso(alert.resolved_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _alert_line(row: dict[str, Any]) -> str:
    where = " ".join(f"{key}={value}" for key, value in sorted(row["labels"].items()) if key != "suite")
    value = "-" if row["value"] is None else f"{row['value']:.4g}"
    limit = "-" if row["threshold"] is None else f"{row['threshold']:.4g}"
    return f"{row['state']:<8} {row['rule']:<9} {row['suite']}  {value} vs {limit}  {where}  since {row['opened_at']}"


# --- gate (the daemon) -------------------------------------------------------------------------


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
    from gate.daemon import Daemon
    from gate.logs import configure

    policies = _load_policies(policies_file)
    configure(settings)
    with open_store(settings) as engine:
        Daemon(engine, policies, settings).serve(interval=interval, once=once)
