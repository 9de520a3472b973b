"""What the HTML report and JUnit show of a judged run: the summary plus the previews and heatmaps the
worker stored, links to the full images, per-layer distances read from the store, and writing both files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from gate.errors import GateError
from gate.judging.verdict import judgements, pair_results, recorded_lookup
from gate.report.html import render_html
from gate.report.junit import write_junit
from gate.report.model import frame_size
from gate.store import repository as repo
from gate.store.models import Comparison, Run


def check_writable(**outputs: Path | None) -> None:
    """Refuse before computing anything when a report could not be written afterwards."""
    for option, path in outputs.items():
        if path is not None and not path.absolute().parent.is_dir():
            raise GateError(f"--{option}: {path}: its folder does not exist")


def report_run(session: Session, summary: dict[str, Any], image_root: Path) -> dict[str, Any]:
    """The judged run (gate.judging.verdict.run_summary) with what the report shows: the worker's previews
    and heatmap (runs that asked for maps), the full images' paths, the failing (else the worst) region,
    per-layer distances and each failed rule's limit."""
    run = repo.get_run(session, run_id=summary["run"])
    comparisons = {(c.ref, c.cand): c for c in repo.list_comparisons(session, run_id=run.id)}
    threshold = _shown_threshold(session, run, comparisons.values())
    layers: dict[int, list[dict[str, Any]]] = {}
    for row in repo.layer_metrics(session, run_id=run.id):
        layers.setdefault(row.comparison_id, []).append({"name": row.name, "distance": row.distance})
    results = pair_results(session, run_id=run.id, with_layers=False)
    judged = zip(results, judgements(session, run, results), strict=True)
    limits = {(pair.ref, pair.cand): {finding.rule: finding.limit for finding in judgement.findings}
              for pair, judgement in judged if judgement is not None}
    pairs = []
    for pair in summary["pairs"]:
        comparison = comparisons[(pair["ref"], pair["cand"])]
        pairs.append(
            {
                **pair,
                "ref_thumb": comparison.ref_thumb,
                "cand_thumb": comparison.cand_thumb,
                "heatmap_png": comparison.heatmap_png,
                "ref_file": _existing(image_root, pair["ref"]),
                "cand_file": _existing(image_root, pair["cand"]),
                "layers": layers.get(comparison.id, []),
                "limits": limits.get((pair["ref"], pair["cand"]), {}),
                "worst_region": (comparison.regions or {}).get("region"),
                "cand_size": frame_size(comparison.heatmap_png),
            }
        )
    return {**summary, "threshold": threshold, "pairs": pairs}


def _shown_threshold(session: Session, run: Run, comparisons: Iterable[Comparison]) -> float | None:
    """The run's threshold, else the max_distance that judged the first scored pair (its policy's, or calibrated)."""
    scored = [c for c in comparisons if c.net is not None and c.weights_version is not None]
    lookup = recorded_lookup(session, run)
    if run.threshold is not None or not scored or lookup is None:
        return run.threshold
    first = scored[0]
    assert first.net is not None and first.weights_version is not None
    return lookup(first.net, first.weights_version, first.cand).max_distance


def _existing(image_root: Path, relative: str) -> str | None:
    """The full image a preview links to; None for the side a new or missing frame lacks, and for a
    path that leads out of the image root (the report names no file outside it)."""
    path = image_root / relative
    inside = path.resolve().is_relative_to(image_root.resolve())
    return str(path.absolute()) if inside and path.is_file() else None


def write_artefacts(run: dict[str, Any] | None, *, report: Path | None, junit: Path | None) -> None:
    """The HTML report links the full images relative to its own folder; JUnit attaches the heatmaps,
    written beside it."""
    if run is None:
        return
    if report is not None:
        _write(report, render_html(run, links_from=report.parent))
    if junit is not None:
        write_junit(run, junit)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise GateError(f"{path}: cannot write: {exc.strerror}") from exc
