"""Reading runs back for the HTTP API and its pages: recent runs, one run judged as soon as it has
finished (as `wait` judges it), its pairs worst first with what the run page shows, and the images
of a pair, from the store (thumbnails, heatmap) or, without a thumbnail, the input file itself
when a browser can show it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from gate.judging.verdict import judge_if_possible, run_summary
from gate.report.model import media_type
from gate.runs.service import layer_result
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import session_scope
from gate.store.models import Comparison, Run, Suite
from gate.vocabulary import FINISHED

SEVERITY = {"error": 0, "fail": 1, "pass": 2, None: 3}  # worst first; unjudged last
IMAGE_KINDS = ("ref", "cand", "heatmap")
PNG_SIZE_END = 24  # a PNG's width and height end here (IHDR)


def recent_runs(session: Session, *, limit: int = 50, suite: str | None = None) -> list[dict[str, Any]]:
    """The newest runs first: id, suite, verdict (None while pending), when, metadata and progress."""
    stmt = select(Run).order_by(Run.id.desc()).limit(limit)
    if suite is not None:
        stmt = stmt.join(Suite, Run.suite_id == Suite.id).where(Suite.name == suite)
    runs = list(session.scalars(stmt))
    counts: dict[int, dict[str, int]] = {run.id: {} for run in runs}
    grouped = (select(Comparison.run_id, Comparison.status, func.count())
               .where(Comparison.run_id.in_(counts)).group_by(Comparison.run_id, Comparison.status))
    for run_id, status, count in session.execute(grouped):
        counts[run_id][status] = count
    return [{"run": run.id, "suite": run.suite.name, "verdict": run.verdict, "created_at": run.created_at.isoformat(),
             "meta": run.meta, "pairs": sum(counts[run.id].values()),
             "finished": sum(counts[run.id].get(status, 0) for status in FINISHED)} for run in runs]


def existing_run(engine: Engine, run_id: int) -> None:
    """repo.NotFound unless run `run_id` is in the store."""
    with session_scope(engine) as session:
        repo.get_run(session, run_id=run_id)


def run_view(engine: Engine, settings: Settings, run_id: int) -> dict[str, Any]:
    """The run as `check --json` shows it (gate.judging.verdict.run_summary), judged first if it has
    finished and records its own policy, with when it was made, its metadata and its progress.
    repo.NotFound for an unknown run."""
    with session_scope(engine) as session:
        run = repo.get_run(session, run_id=run_id)
        progress = repo.run_progress(session, run_id=run_id)
        verdict = run.verdict
    finished = sum(progress[status] for status in FINISHED)
    if verdict is None and finished == sum(progress.values()):
        judge_if_possible(engine, run_id=run_id, settings=settings)
    with session_scope(engine) as session:
        run = repo.get_run(session, run_id=run_id)
        return {**run_summary(session, run_id), "created_at": run.created_at.isoformat(), "finished": finished,
                "total": sum(progress.values())}


def run_page(engine: Engine, settings: Settings, run_id: int) -> dict[str, Any]:
    """`run_view` with what the run page draws per pair, worst first: its comparison id (for the image
    routes), which images there are, the worst region as percentages of the candidate, its layers."""
    view = run_view(engine, settings, run_id)
    with session_scope(engine) as session:
        comparisons = {(c.ref, c.cand): c for c in repo.list_comparisons(session, run_id=run_id)}
        layers: dict[int, list[dict[str, Any]]] = {}
        for row in repo.layer_metrics(session, run_id=run_id):
            layers.setdefault(row.comparison_id, []).append(layer_result(row))
        pairs = [_shown_pair(pair, comparisons[(pair["ref"], pair["cand"])], layers, settings.image_root)
                 for pair in view["pairs"]]
    pairs.sort(key=lambda pair: (SEVERITY[pair["verdict"]], -(pair["distance"] or 0.0)))
    return {**view, "pairs": pairs}


def _shown_pair(pair: dict[str, Any], comparison: Comparison, layers: dict[int, list[dict[str, Any]]],
                image_root: Path) -> dict[str, Any]:
    own = layers.get(comparison.id, [])
    total = sum(layer["distance"] or 0.0 for layer in own)
    for layer in own:
        layer["share"] = (layer["distance"] or 0.0) / total if total > 0 else 0.0
    box = pair["where"] or (comparison.regions or {}).get("region")
    return {**pair, "id": comparison.id, "layers": own,
            "images": {kind: _image(comparison, kind, image_root, head_only=True) is not None
                       for kind in IMAGE_KINDS},
            "box": None if box is None else _percent(box, _image_size(image_root / comparison.cand))}


def _percent(box: list[int], size: tuple[int, int] | None) -> dict[str, Any] | None:
    if size is None:
        return None
    (x, y, w, h), (width, height) = box, size
    return {"left": 100 * x / width, "top": 100 * y / height, "width": 100 * w / width, "height": 100 * h / height,
            "px": f"{x},{y} {w}x{h}"}


def pair_image(session: Session, settings: Settings, *, run_id: int, comparison_id: int,
               kind: str) -> tuple[bytes, str]:
    """The bytes and media type of a pair's `kind` image (ref, cand or heatmap); repo.NotFound when
    the run has no such pair or there is nothing a browser could show."""
    comparison = session.get(Comparison, comparison_id)
    if comparison is None or comparison.run_id != run_id or kind not in IMAGE_KINDS:
        raise repo.NotFound(f"run {run_id}: no comparison {comparison_id} with a {kind} image")
    found = _image(comparison, kind, settings.image_root)
    if found is None:
        raise repo.NotFound(f"comparison {comparison_id}: no {kind} image a browser can show")
    return found


def _image(comparison: Comparison, kind: str, image_root: Path, *,
           head_only: bool = False) -> tuple[bytes, str] | None:
    """The stored thumbnail or heatmap, else (ref, cand) the input file when it lies in the image
    root and a browser can show it; `head_only` reads no more of a file than its type needs."""
    stored = {"ref": comparison.ref_thumb, "cand": comparison.cand_thumb, "heatmap": comparison.heatmap_png}[kind]
    if stored is not None:
        media = media_type(stored)
        return None if media is None else (stored, media)
    if kind == "heatmap":
        return None
    root = image_root.resolve()
    path = (root / (comparison.ref if kind == "ref" else comparison.cand)).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    with path.open("rb") as file:
        data = file.read(12 if head_only else -1)
    media = media_type(data)
    return None if media is None else (data, media)


def _image_size(path: Path) -> tuple[int, int] | None:
    """An input image's (width, height): Pillow reads the header when installed (it comes with the
    engine), else a PNG's own header; None when neither can."""
    try:
        from PIL import Image
    except ImportError:
        try:
            with path.open("rb") as file:
                head = file.read(PNG_SIZE_END)
        except OSError:
            return None
        if media_type(head) != "image/png" or len(head) < PNG_SIZE_END:
            return None
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError):
        return None
