"""What the HTML report and JUnit show of a judged run: the summary plus thumbnails, heatmaps and
per-layer distances read from the store, and writing both files."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from gate.errors import GateError
from gate.judging.verdict import judgements, pair_results, recorded_lookup
from gate.report.html import PNG_SIGNATURE, render_html
from gate.report.junit import render_junit
from gate.store import repository as repo
from gate.store.models import Comparison, Run

REPORT_IMAGE_PX = 704  # twice the report's display width: sharp on high-density screens
PNG_SIZE_END = 24  # a PNG's width and height are the IHDR chunk's first 8 bytes, ending here


def check_writable(**outputs: Path | None) -> None:
    """Refuse before computing anything when a report could not be written afterwards."""
    for option, path in outputs.items():
        if path is not None and not path.absolute().parent.is_dir():
            raise GateError(f"--{option}: {path}: its folder does not exist")


def report_run(session: Session, summary: dict[str, Any], image_root: Path) -> dict[str, Any]:
    """The judged run (gate.judging.verdict.run_summary) with what the report shows: images, heatmaps
    with the failing (else the worst) region outlined, per-layer distances and each failed rule's limit."""
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
        cand_png, cand_size = _report_png(image_root / pair["cand"])
        pairs.append(
            {
                **pair,
                "ref_png": _report_png(image_root / pair["ref"])[0],
                "cand_png": cand_png,
                "heatmap_png": comparison.heatmap_png,
                "layers": layers.get(comparison.id, []),
                "limits": limits.get((pair["ref"], pair["cand"]), {}),
                "worst_region": (comparison.regions or {}).get("region"),
                "cand_size": cand_size,
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


def _report_png(path: Path) -> tuple[bytes | None, tuple[int, int] | None]:
    """A PNG thumbnail of an input image and the image's own size (width, height), or None for each
    that cannot be had (then the report says so). Pillow comes with the engine; without it only PNG
    inputs are embedded, as they are, their size read from the header."""
    try:
        from PIL import Image
    except ImportError:
        data = path.read_bytes() if path.is_file() else b""
        if not data.startswith(PNG_SIGNATURE) or len(data) < PNG_SIZE_END:
            return None, None
        return data, (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    try:
        with Image.open(path) as image:
            size = image.size
            image.thumbnail((REPORT_IMAGE_PX, REPORT_IMAGE_PX))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "PNG")
    except (OSError, ValueError):
        return None, None
    return buffer.getvalue(), size


def write_artefacts(run: dict[str, Any] | None, *, report: Path | None, junit: Path | None) -> None:
    for path, render in ((report, render_html), (junit, render_junit)):
        if path is None or run is None:
            continue
        try:
            path.write_text(render(run), encoding="utf-8")
        except OSError as exc:
            raise GateError(f"{path}: cannot write: {exc.strerror}") from exc
