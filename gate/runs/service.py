"""The producer's service: store a run comparing two folders, hand its comparisons to the broker (or
compute them in this process without one), wait for them, and read the run back.

The store is the source of truth: everything that can be refused is refused before the run is stored,
and comparisons no worker will ever see end as errors, so nobody waits for them. Celery and the engine
are imported only by the dispatch that needs them."""

from __future__ import annotations

import glob
import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gate.errors import BrokerUnreachable, GateError
from gate.judging.policy import Policy, PolicySet, SuitePolicies, suite_policy
from gate.runs.pairing import Pairing, PairingError, pair_folders
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import review, session_scope
from gate.store.models import Comparison, LayerMetric, Run
from gate.tonemap import HDR_SUFFIXES, tonemap_policy
from gate.vocabulary import FINISHED, MISSING_MODES, RESIZE_MODES, STAT_KEYS

POLL_SECONDS = 0.5
META_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
META_VALUE_CHARS = 1000
Progress = Callable[[int, int], None]  # (finished, total)
Dispatch = Callable[[Engine, int, list[int]], None]


class RunTimedOut(GateError):
    """The run's comparisons did not all finish in time."""


def validate_options(suite: str, threshold: float | None, missing: str = "fail") -> None:
    if missing not in MISSING_MODES:
        raise GateError(f"--missing: must be one of {', '.join(MISSING_MODES)}, got {missing!r}")
    if not suite.strip():
        raise GateError("--suite: must not be empty")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise GateError(f"--threshold: must be a finite number >= 0, got {threshold}")


def parse_meta(items: Sequence[str]) -> dict[str, str]:
    """`--meta KEY=VALUE` items as a dict. A key is a word (letters, digits, underscores, not starting
    with a digit, at most 64 characters) so it can name a JUnit property and an Alertmanager annotation
    (`meta_KEY`); a key given twice is refused."""
    meta: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not META_KEY.fullmatch(key):
            raise GateError(f"--meta {item!r}: expected KEY=VALUE with KEY a word ([A-Za-z_][A-Za-z0-9_]*, "
                            "at most 64 characters)")
        if key in meta:
            raise GateError(f"--meta {key}: given twice")
        if len(value) > META_VALUE_CHARS:
            raise GateError(f"--meta {key}: the value is longer than {META_VALUE_CHARS} characters")
        meta[key] = value
    return meta


def submit_run(settings: Settings, engine: Engine, ref_dir: Path, cand_dir: Path, *, suite: str,
               threshold: float | None, net: str | None, version: str | None, precision: str | None,
               maps: bool, policies: PolicySet | None = None, meta: dict[str, str] | None = None,
               missing: str = "fail", resize: str = "none", exposure: float = 0.0) -> tuple[int, list[int]]:
    """Store a run comparing the two folders and hand its comparisons to the broker, or compute them
    here without one; returns the run id and the ids of the comparisons to compute. Unset net, version
    and precision come from Settings. Given policies and/or a threshold become the run's own policy,
    which every judge then uses; without either the gate daemon judges it by its policies. `meta`
    (commit, pipeline...) is stored with the run as its submitter gives it. New and missing frames
    and paths that link out of the image root are stored finished (never computed); `missing`
    (gate.vocabulary.MISSING_MODES) says what new and missing frames do to the verdict; `resize` and
    `exposure` (OpenEXR, stops) are applied by the workers as `compare` applies them."""
    validate_options(suite, threshold, missing)
    validate_compare_options(resize, exposure)
    pairing = _pair(ref_dir, cand_dir, settings.image_root)
    dispatch = make_dispatch(settings)
    spec = RunSpec(suite, threshold, net, version, precision, maps, policies, meta, missing, resize, exposure)
    run_id, ids = store_run(settings, engine, pairing, spec, cand_dir=_under_root(cand_dir, settings.image_root))
    dispatch(engine, run_id, ids)
    return run_id, ids


@dataclass(frozen=True)
class RunSpec:
    """How a run is to be computed and judged, as its submitter gives it (unset: from Settings)."""

    suite: str
    threshold: float | None = None
    net: str | None = None
    version: str | None = None
    precision: str | None = None
    maps: bool = False
    policies: PolicySet | None = None
    meta: dict[str, str] | None = None
    missing: str = "fail"
    resize: str = "none"
    exposure: float = 0.0


def store_run(settings: Settings, engine: Engine, pairing: Pairing, spec: RunSpec, *,
              cand_dir: str) -> tuple[int, list[int]]:
    """Store a run of these pairs (paths under the image root) without dispatching it: the HTTP API
    answers with the id before the work is done. Returns the run id and the ids of the comparisons
    to compute (new, missing and refused frames are stored finished). `cand_dir` (relative to the
    image root) is what the image rules' globs are relative to."""
    validate_options(spec.suite, spec.threshold, spec.missing)
    validate_compare_options(spec.resize, spec.exposure)
    net = spec.net or settings.net
    own = submitted_policy(spec.policies, suite=spec.suite, threshold=spec.threshold, net=net)
    options = _run_options(pairing.every, spec.maps, own, suite=spec.suite, cand_dir=cand_dir,
                           image_root=settings.image_root, exposure=spec.exposure)
    options["missing"] = spec.missing
    if spec.resize != "none":
        options["resize"] = spec.resize
    settled: dict[tuple[str, str], tuple[str, str | None]] = {
        **{pair: ("new", None) for pair in pairing.new},
        **{pair: ("missing", None) for pair in pairing.missing},
        **{pair: ("error", reason) for pair, reason in pairing.refused.items()},
    }
    with session_scope(engine) as session:
        created = repo.create_run(session, suite_name=spec.suite, pairs=pairing.every, threshold=spec.threshold,
                                  net=net, version=spec.version or settings.version,
                                  precision=spec.precision or settings.precision, options=options,
                                  policy=None if own is None else own.model_dump(mode="json"), meta=spec.meta)
        review.settle_unqueued(session, run_id=created.id, settled=settled)
        review.record_hashes(session, run_id=created.id, hashes={
            (ref, cand): (None, _sha256(settings.image_root / cand)) for ref, cand in pairing.new})
        return created.id, [c.id for c in repo.list_comparisons(session, run_id=created.id) if c.status == "queued"]


def folder_pairing(settings: Settings, ref_dir: Path, cand_dir: Path) -> tuple[Pairing, str]:
    """Two folders under the image root paired as `submit` pairs them, and the candidate folder
    relative to the root; GateError naming the folder when one is outside the root or missing."""
    return _pair(ref_dir, cand_dir, settings.image_root), _under_root(cand_dir, settings.image_root)


def confined_pairs(settings: Settings, pairs: list[tuple[str, str]]) -> Pairing:
    """Explicit (ref, cand) files, relative to the image root, as stored: GateError naming the first
    path that leaves the root or is not a file (a file symlink must stay inside the root too)."""
    root = settings.image_root.resolve()
    confined = []
    for index, pair in enumerate(pairs):
        shown = []
        for side, path in zip(("ref", "cand"), pair):
            resolved = (root / path).resolve()
            if not resolved.is_relative_to(root):
                raise GateError(f"pairs[{index}].{side}: {path}: outside the image root (LPIPS_GATE_IMAGE_ROOT)")
            if not resolved.is_file():
                raise GateError(f"pairs[{index}].{side}: {path}: no such file under the image root")
            shown.append(Path(os.path.normpath(root / path)).relative_to(root).as_posix())
        confined.append((shown[0], shown[1]))
    return Pairing(pairs=sorted(set(confined), key=lambda pair: (pair[1], pair[0])))


def make_dispatch(settings: Settings) -> Dispatch:
    """What hands stored comparisons to be computed: the broker's queue, or the embedded executor
    in this process. Checked now (broker reachable, engine installed), before any run is stored."""
    return _broker_dispatch(settings) if settings.broker_url else _embedded_dispatch(settings)


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def submitted_policy(policies: PolicySet | None, *, suite: str, threshold: float | None,
                     net: str) -> SuitePolicies | None:
    """The policy a submitter gives a run of `net`: the suite's in `policies` (or the defaults),
    `threshold` as that net's max_distance; None when neither is given."""
    if policies is None and threshold is None:
        return None
    return suite_policy(PolicySet() if policies is None else policies, suite=suite, threshold=threshold, net=net)


def dispatched(settings: Settings, count: int) -> str:
    """What `submit_run` did with `count` comparisons: the broker gets messages of pairs_per_message ids."""
    if settings.broker_url:
        return f"queued in {math.ceil(count / settings.pairs_per_message)} messages"
    return "computed in-process"


def validate_compare_options(resize: str, exposure: float) -> None:
    if resize not in RESIZE_MODES:
        raise GateError(f"--resize: must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if not math.isfinite(exposure):
        raise GateError(f"--exposure: must be a finite number of stops, got {exposure}")


def _run_options(pairs: list[tuple[str, str]], maps: bool, policy: SuitePolicies | None, *, suite: str,
                 cand_dir: str, image_root: Path, exposure: float = 0.0) -> dict[str, Any]:
    """What the workers need beyond the pairs: the spatial scores' parameters and masks from the
    submitted policy (the defaults without one), and the candidate folder the image rules' globs are
    relative to; HDR input records the tone map its distances depend on (its exposure, when not 0)."""
    base = Policy() if policy is None else policy.base
    options: dict[str, Any] = {"maps": maps, "region_px": base.region_px, "area_level": base.area_level,
                               "masks": [] if policy is None else _masks(policy, suite, cand_dir, image_root),
                               "cand_dir": cand_dir}
    if exposure:
        options["exposure"] = exposure
    if any(path.lower().endswith(HDR_SUFFIXES) for pair in pairs for path in pair):
        options["tonemap"] = tonemap_policy(exposure)
    return options


def _masks(policy: SuitePolicies, suite: str, cand_dir: str, image_root: Path) -> list[dict[str, Any]]:
    """The image rules that hide something, for the workers: each glob rooted at the image root (the
    stored cand path matches it, fnmatch.fnmatchcase), its rectangles, its mask image, which must exist."""
    masks = []
    for index, rule in enumerate(policy.images):
        if not rule.ignore and rule.mask is None:
            continue
        if rule.mask is not None and not (image_root / rule.mask).is_file():
            raise GateError(f"--policies: suite.{suite}.images.{index}.mask: {rule.mask}: no such file under the "
                            f"image root {image_root}")
        rooted = rule.glob if cand_dir == "." else f"{glob.escape(cand_dir)}/{rule.glob}"
        masks.append({"glob": rooted, "rects": [list(rect) for rect in rule.ignore], "mask": rule.mask})
    return masks


def _under_root(folder: Path, image_root: Path) -> str:
    """A folder the pairing accepted, relative to the image root (posix; "." for the root itself)."""
    return folder.resolve().relative_to(image_root.resolve()).as_posix()


def _pair(ref_dir: Path, cand_dir: Path, image_root: Path) -> Pairing:
    try:
        return pair_folders(ref_dir, cand_dir, image_root=image_root)
    except PairingError as exc:
        raise GateError(str(exc)) from exc


def _broker_dispatch(settings: Settings) -> Dispatch:
    """Checks the broker before the run is stored, so an unreachable one leaves no run behind."""
    from kombu import Connection
    from kombu.exceptions import OperationalError

    from gate.runs.queue import StoreNotReady, enqueue, make_celery, store_queue

    try:
        with Connection(settings.broker_url) as connection:  # type: ignore[no-untyped-call]  # kombu is untyped
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=5)
    except OperationalError as exc:
        raise BrokerUnreachable(f"broker unreachable (LPIPS_GATE_BROKER_URL): {exc}") from exc

    def send(engine: Engine, run_id: int, ids: list[int]) -> None:
        try:
            queue = store_queue(engine, settings)
        except StoreNotReady as exc:
            give_up(engine, ids, reason=f"not queued: {exc}")
            raise GateError(f"run {run_id}: comparisons marked as errors: {exc}") from exc
        try:
            enqueue(make_celery(settings, queue=queue), ids, per_message=settings.pairs_per_message)
        except OperationalError as exc:
            give_up(engine, ids, reason=f"not queued: broker unreachable: {exc}")
            raise BrokerUnreachable(f"run {run_id}: broker unreachable, comparisons marked as errors: {exc}") from exc

    return send


def give_up(engine: Engine, ids: list[int], *, reason: str) -> None:
    """Comparisons that no worker will ever see end as errors, so `wait` does not wait for them."""
    with session_scope(engine) as session:
        for comparison_id in ids:
            repo.record_error(session, comparison_id=comparison_id, reason=reason, final=True)


def _embedded_dispatch(settings: Settings) -> Dispatch:
    """Loads the engine before the run is stored, so a missing one leaves no run behind."""
    from gate.runs.executors import EMBEDDED, load_executor

    executor = load_executor(EMBEDDED)

    def compute(_engine: Engine, _run_id: int, ids: list[int]) -> None:
        executor(settings, ids)

    return compute


def poll_until_finished(engine: Engine, run_id: int, *, timeout: float, interval: float = POLL_SECONDS,
                        progress: Progress | None = None) -> None:
    """Return once every comparison of the run is done or failed, looking every `interval` seconds;
    GateError when the run does not exist, RunTimedOut (naming the progress so far) when `timeout`
    seconds pass first."""
    with session_scope(engine) as session:
        require_run(session, run_id)
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(engine) as session:
            counts = repo.run_progress(session, run_id=run_id)
        finished, total = sum(counts[status] for status in FINISHED), sum(counts.values())
        if progress is not None:
            progress(finished, total)
        remaining = deadline - time.monotonic()
        if finished == total:
            return
        if remaining <= 0:
            raise RunTimedOut(f"run {run_id}: timed out after {timeout:g} s (done {finished} of {total})", run=run_id)
        time.sleep(min(interval, remaining))


def require_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise GateError(f"run {run_id}: not found")
    return run


def run_results(session: Session, run_id: int) -> dict[str, Any]:
    """The run as `results` prints it: {"run", "suite", "meta", "comparisons": [...]}, the comparisons
    in submission order, with their layers."""
    run = require_run(session, run_id)
    layers: dict[int, list[dict[str, Any]]] = {}
    for row in repo.layer_metrics(session, run_id=run_id):
        layers.setdefault(row.comparison_id, []).append(layer_result(row))
    comparisons = [comparison_result(c, layers.get(c.id, [])) for c in repo.list_comparisons(session, run_id=run_id)]
    return {"run": run.id, "suite": run.suite.name, "meta": dict(run.meta or {}), "comparisons": comparisons}


def comparison_result(comparison: Comparison, layers: list[dict[str, Any]]) -> dict[str, Any]:
    """One comparison with the backbone and weights version that scored it, its scores by name, the
    [x, y, w, h] of those with a location (null where never scored), and its layers."""
    return {"ref": comparison.ref, "cand": comparison.cand, "status": comparison.status,
            "distance": comparison.distance, "net": comparison.net, "weights_version": comparison.weights_version,
            "attempts": comparison.attempts, "error": comparison.error, "scores": comparison.scores,
            "regions": comparison.regions, "layers": layers}


def layer_result(row: LayerMetric) -> dict[str, Any]:
    """A stored layer as the engine reports it: its distance and both sides' statistics by key."""
    stats = {f"{side}_stats": {key: getattr(row, f"{side}_{key}") for key in STAT_KEYS} for side in ("ref", "cand")}
    return {"index": row.layer_index, "name": row.name, "distance": row.distance, **stats}
