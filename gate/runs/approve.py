"""`approve`: promote a finished run's candidates to references, so the next check of the same folders
compares the accepted frames with themselves (distance 0).

Each reference is replaced atomically (a temporary copy in its folder, fsync, os.replace, the folder
fsynced); a `new` frame creates its reference (and folders); a `missing` frame has no candidate and
is left as it is; a pair that errored is not approved. What the run measured is the contract: every
selected reference and candidate is checked against the sha256 the run recorded before anything is
replaced, and one that changed since (or was never measured) refuses the whole approval
(ApprovalConflict): nothing changes. Every replaced file is recorded (gate.store.models.Approval)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from gate.errors import GateError
from gate.judging.verdict import relative_image
from gate.runs.service import require_run
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import review, session_scope
from gate.store.models import Comparison
from gate.store.opening import open_store
from gate.vocabulary import FINISHED

SHOWN_CONFLICTS = 5


class ApprovalConflict(GateError):
    """A reference or candidate changed since the run measured it: nothing was approved."""


@dataclass(frozen=True)
class _Step:
    comparison: Comparison
    ref: Path
    cand: Path


def approve_run(settings: Settings, run_id: int, *, only: str | None = None, by: str | None = None) -> dict[str, Any]:
    """{"run", "approved": [{"ref", "cand", "sha256_before" (None for a new frame), "sha256_after"}],
    "skipped": [{"ref", "cand", "status", "reason"}]} for the run's frames whose path under the
    candidate folder matches `only` (fnmatch; all without it). GateError for an unknown or unfinished
    run or a glob that matches nothing; ApprovalConflict when a file changed since the run."""
    with open_store(settings) as engine, session_scope(engine) as session:
        run = require_run(session, run_id)
        comparisons = repo.list_comparisons(session, run_id=run_id)
        unfinished = [c for c in comparisons if c.status not in FINISHED]
        if unfinished:
            raise GateError(f"run {run_id}: not finished ({len(unfinished)} comparison(s) queued or running): "
                            "only a finished run can be approved", run=run_id)
        cand_dir = run.options.get("cand_dir")
        selected = [c for c in comparisons if only is None or fnmatchcase(relative_image(c.cand, cand_dir), only)]
        if not selected:
            raise GateError(f"--only {only!r}: matches no frame of run {run_id}", run=run_id)
        steps, skipped = [], []
        for comparison in selected:
            if comparison.status in ("done", "new"):
                steps.append(_Step(comparison, _under(settings.image_root, comparison.ref),
                                   _under(settings.image_root, comparison.cand)))
            else:
                skipped.append({"ref": comparison.ref, "cand": comparison.cand, "status": comparison.status,
                                "reason": _skip_reason(comparison)})
        conflicts = [conflict for step in steps if (conflict := _conflict(step)) is not None]
        if conflicts:
            shown = "; ".join(conflicts[:SHOWN_CONFLICTS]) + ("; ..." if len(conflicts) > SHOWN_CONFLICTS else "")
            raise ApprovalConflict(f"run {run_id}: {len(conflicts)} file(s) changed since the run measured them, "
                                   f"nothing approved: {shown}", run=run_id)
        approved = [_approve(step) for step in steps]
        review.record_approvals(session, run_id=run_id, approved=approved, by=by)
    return {"run": run_id, "approved": approved, "skipped": skipped}


def _skip_reason(comparison: Comparison) -> str:
    if comparison.status == "missing":
        return "missing: no candidate, the reference is left as it is"
    return f"{comparison.status}: not compared ({comparison.error or 'no result'})"


def _under(root: Path, relative: str) -> Path:
    """A stored path under the image root; one that leads out of it (a link, `..`) is refused."""
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise GateError(f"{path}: outside the image root {root}: not approved")
    return path


def _conflict(step: _Step) -> str | None:
    """Why the step's files are no longer what the run measured, or None."""
    comparison = step.comparison
    if comparison.cand_sha256 is None:
        return f"{comparison.cand}: no sha256 recorded by the run (computed before approvals existed)"
    if _sha256(step.cand) != comparison.cand_sha256:
        return f"{comparison.cand}: the candidate changed"
    if comparison.status == "new":
        return f"{comparison.ref}: a reference appeared" if step.ref.exists() else None
    if comparison.ref_sha256 is None:
        return f"{comparison.ref}: no sha256 recorded by the run (computed before approvals existed)"
    if _sha256(step.ref) != comparison.ref_sha256:
        return f"{comparison.ref}: the reference changed"
    return None


def _sha256(path: Path) -> str | None:
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def _approve(step: _Step) -> dict[str, Any]:
    """Copy the candidate beside the reference, flush it to disk, then rename it over the reference."""
    comparison = step.comparison
    folder = step.ref.parent
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{step.ref.name}.", suffix=".approving")
    digest = hashlib.sha256()
    try:
        with os.fdopen(descriptor, "wb") as out, step.cand.open("rb") as source:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != comparison.cand_sha256:
            raise ApprovalConflict(f"{comparison.cand}: the candidate changed while it was approved")
        shutil.copymode(step.cand, temporary)
        os.replace(temporary, step.ref)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    return {"ref": comparison.ref, "cand": comparison.cand,
            "sha256_before": comparison.ref_sha256 if comparison.status == "done" else None,
            "sha256_after": digest.hexdigest()}


def _fsync_folder(folder: Path) -> None:
    """The rename itself survives a crash once its folder is on disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
