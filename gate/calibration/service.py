"""`calibrate`: compare each folder of accepted re-renders with the references, one run per folder
through the submission service (with a broker the workers compute, without one this process does),
learn every score's noise floor from the finished pairs (gate.calibration.learn) and store the
thresholds with the runs they came from (gate.calibration.store).

A calibration is for one backbone and its weights: every pair must have been scored, and by the same
(net, weights_version), or nothing is stored. The runs carry no policy of their own: they are
ordinary runs of the suite, judged by the gate daemon like any other."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from gate.calibration import store
from gate.calibration.learn import DEFAULT_MARGIN, Sample, learn
from gate.errors import GateError
from gate.runs.pairing import PairingError, pair_dirs
from gate.runs.service import Progress, RunTimedOut, poll_until_finished, submit_run, validate_options
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import session_scope
from gate.store.models import Comparison
from gate.store.opening import open_store


@dataclass(frozen=True)
class CalibrationRequest:
    ref_dir: Path
    good_dirs: tuple[Path, ...]
    suite: str
    margin: float = DEFAULT_MARGIN
    net: str | None = None
    precision: str | None = None
    timeout: float = 3600.0


def calibrate(settings: Settings, request: CalibrationRequest, *,
              progress: Progress | None = None) -> store.Calibration:
    """Submit one run per good folder, wait for them all (within `timeout` seconds together), learn and store."""
    validate_options(request.suite, None)
    _require_distinct(request.ref_dir, request.good_dirs)
    if not (math.isfinite(request.margin) and request.margin >= 0):
        raise GateError(f"--margin: must be a finite number >= 0, got {request.margin}")
    names = [_image_names(settings, request.ref_dir, good) for good in request.good_dirs]  # refused before any run
    deadline = time.monotonic() + request.timeout
    with open_store(settings) as engine:
        submitted = [
            submit_run(settings, engine, request.ref_dir, good, suite=request.suite, threshold=None, net=request.net,
                       version=None, precision=request.precision, maps=False)
            for good in request.good_dirs
        ]
        run_ids = [run_id for run_id, _ids in submitted]
        total, finished_before = sum(len(ids) for _run, ids in submitted), 0
        for run_id, ids in submitted:
            shown = None if progress is None else _offset(progress, finished_before, total)
            try:
                poll_until_finished(engine, run_id, timeout=max(0.0, deadline - time.monotonic()), progress=shown)
            except RunTimedOut as exc:
                raise RunTimedOut(f"runs {', '.join(map(str, run_ids))}: not all finished after "
                                  f"{request.timeout:g} s: nothing calibrated", run=exc.run) from exc
            finished_before += len(ids)
        with session_scope(engine) as session:
            samples, (net, weights_version) = _samples(session, run_ids, names)
            learnt = learn(samples, margin=request.margin)
            return store.record(session, suite=request.suite, net=net, weights_version=weights_version,
                                run_ids=run_ids, pairs=len(samples), margin=request.margin, learnt=learnt)


def _require_distinct(ref_dir: Path, good_dirs: tuple[Path, ...]) -> None:
    """A folder given twice would count its renders twice; the references against themselves teach nothing."""
    if not good_dirs:
        raise GateError("GOOD_DIR: give at least one folder of accepted re-renders")
    seen = {ref_dir.resolve(): "REF_DIR"}
    for good in good_dirs:
        if good.resolve() in seen:
            raise GateError(f"GOOD_DIR {good}: already given as {seen[good.resolve()]}")
        seen[good.resolve()] = "GOOD_DIR"


def _image_names(settings: Settings, ref_dir: Path, good_dir: Path) -> dict[str, str]:
    """Each candidate's stored path -> the image's path relative to its folder (what pairs it)."""
    try:
        pairs = pair_dirs(ref_dir, good_dir, image_root=settings.image_root)
    except PairingError as exc:
        raise GateError(str(exc)) from exc
    folder = good_dir.resolve().relative_to(settings.image_root.resolve()).as_posix()
    prefix = "" if folder == "." else f"{folder}/"
    return {cand: cand.removeprefix(prefix) for _ref, cand in pairs}


def _offset(progress: Progress, finished_before: int, total: int) -> Progress:
    """One progress over every run: this run's pairs count after those of the runs before it."""
    return lambda finished, _run_total: progress(finished_before + finished, total)


def _samples(session: Session, run_ids: list[int], names: list[dict[str, str]]) -> tuple[list[Sample], tuple[str, str]]:
    """Every pair's scores by image, and the one backbone that scored them; GateError (nothing is
    stored) when a pair was not scored or the pairs were scored by more than one backbone."""
    samples: list[Sample] = []
    backbones: Counter[tuple[str, str]] = Counter()
    for run_id, image_of in zip(run_ids, names, strict=True):
        for comparison in repo.list_comparisons(session, run_id=run_id):
            if comparison.status != "done" or comparison.distance is None or comparison.net is None \
                    or comparison.weights_version is None:
                raise GateError(f"run {run_id}: {comparison.ref} -> {comparison.cand} was not scored "
                                f"({comparison.error or comparison.status}): nothing calibrated")
            backbones[comparison.net, comparison.weights_version] += 1
            samples.append((image_of[comparison.cand], _scores(comparison)))
    if len(backbones) > 1:
        found = ", ".join(f"{net}@{version}: {count}" for (net, version), count in sorted(backbones.items()))
        raise GateError(f"runs {', '.join(map(str, run_ids))}: pairs scored by more than one backbone ({found}); "
                        "a calibration is for one: nothing calibrated")
    [backbone] = backbones
    return samples, backbone


def _scores(comparison: Comparison) -> dict[str, float | None]:
    """The pair's scores by name (comparisons.scores, from migration 0005 on); `mean` is the distance
    where they are absent."""
    scores: dict[str, float | None] = dict(getattr(comparison, "scores", None) or {})
    scores.setdefault("mean", comparison.distance)
    return scores
