"""The broker-agnostic core of a worker: `Processor` claims comparisons, resolves their paths, measures
them and records every outcome once; `Store` retries its transactions through a database restart. The
Celery adapter (worker/celery_app.py) and the embedded mode (worker/embedded.py) both run it; it imports
no broker library."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from itertools import groupby
from pathlib import Path
from typing import TypeVar

import structlog
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from gate.logs import get_logger
from gate.scoring import ScoreOptions
from gate.settings import Settings
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from gate.store.models import Comparison
from worker.images import ImageError, resolve_under
from worker.masks import Ignore, Scoring
from worker.runtime import Measurement, Models

STORE_ERRORS = (OperationalError, InterfaceError)

log = get_logger("lpips_gate.worker")
T = TypeVar("T")

Requeue = Callable[[list[int], float], None]
"""`requeue(ids, delay_s)`: have these ids (queued again in the store) processed after `delay_s`."""
Finished = Callable[[str, str | None, float | None], None]
"""`finished(outcome, net, seconds)` per recorded pair: outcome done, error or retry; seconds when done."""


def worker_name(prefix: str = "") -> str:
    """One name per process: the store's heartbeat and claims are per process."""
    return f"{prefix}{socket.gethostname()}:{os.getpid()}"


class Store:
    """The database for one process; `run` retries a transaction while the database is unreachable
    (a restart), for up to `retry_s`. Every operation it runs is idempotent."""

    def __init__(self, url: str, *, retry_s: float, sleep: Callable[[float], None] = time.sleep):
        self.engine, self.retry_s, self._sleep = make_engine(url), retry_s, sleep

    def run(self, work: Callable[[Session], T], *, what: str, retry: bool = True) -> T:
        deadline, delay = time.monotonic() + (self.retry_s if retry else 0), 0.1
        while True:
            try:
                with session_scope(self.engine) as session:
                    return work(session)
            except STORE_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("store unreachable; retrying", what=what, error=str(exc.orig).strip(), delay_s=delay)
                self._sleep(delay)
                delay = min(delay * 2, 2.0)

    def dispose(self) -> None:
        self.engine.dispose()


class Processor:
    """Claims comparisons, computes them and records every outcome once. `requeue(ids, delay_s)`
    receives the ones that failed transiently (already queued again in the store); `finished` hears
    of every recorded pair (the worker's metrics)."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        models: Models,
        name: str,
        requeue: Requeue,
        finished: Finished | None = None,
    ):
        self.settings, self.store, self.models, self.name, self.requeue = settings, store, models, name, requeue
        self.finished = finished
        self.held: set[int] = set()  # claimed by this process and not yet recorded
        self.lock = threading.Lock()  # claim-and-hold versus the keeper's release of leftovers

    @property
    def requeue_delay_s(self) -> float:
        """Later than the runtime's own retries, sooner than the sweeper would resend them."""
        return min(self.settings.orphan_after / 2, self.settings.retry_base_s * 4)

    def process(self, ids: Sequence[int]) -> None:
        with self.lock:
            claimed = self.store.run(lambda session: self._claim(session, ids), what="claim")
            self.held = {c.id for c in claimed}
        retry: list[int] = []
        interrupted = False
        try:
            for run_id, group in groupby(sorted(claimed, key=lambda c: c.run_id), key=lambda c: c.run_id):
                with structlog.contextvars.bound_contextvars(run_id=run_id):
                    self._process_run(run_id, list(group), retry)
        except BaseException as exc:
            interrupted = True
            self._release(f"interrupted: {type(exc).__name__}: {exc}", retry)
            raise
        finally:
            if retry:
                self._requeue(retry, one_by_one=interrupted)

    def _requeue(self, ids: list[int], *, one_by_one: bool) -> None:
        """After an interruption (a time limit) the culprit is unknown: each pair goes back alone, so
        one that never finishes in time does not take the rest of its batch down with it."""
        for chunk in ([i] for i in ids) if one_by_one else [ids]:
            self.requeue(chunk, self.requeue_delay_s)

    def _claim(self, session: Session, ids: Sequence[int]) -> list[Comparison]:
        """The queued (or orphaned) ones, plus any this process claimed in a transaction whose
        outcome it never learnt (the connection dropped at commit)."""
        claimed = repo.claim_comparisons(
            session,
            ids=ids,
            worker=self.name,
            max_attempts=self.settings.max_attempts,
            orphan_after=timedelta(seconds=self.settings.orphan_after),
        )
        taken = {c.id for c in claimed}
        return claimed + [c for c in repo.running_under(session, worker=self.name, ids=ids) if c.id not in taken]

    def _process_run(self, run_id: int, comparisons: list[Comparison], retry: list[int]) -> None:
        run = self.store.run(lambda session: repo.get_run(session, run_id=run_id), what="run")
        maps = bool(run.options.get("maps"))
        try:
            options = ScoreOptions.from_options(run.options)
        except ValueError as exc:  # the submission validates them: only a hand-made run gets here
            failed = [(c, Measurement(ref=c.ref, cand=c.cand, error=f"run options: {exc}")) for c in comparisons]
            self._record(failed, False, retry)
            return
        todo, pairs, refused = [], [], []
        ignore: dict[Path, Ignore] = {}
        for comparison in comparisons:
            try:
                pair = (resolve_under(self.settings.image_root, comparison.ref),
                        resolve_under(self.settings.image_root, comparison.cand))
                rules = options.masks_for(comparison.cand)
                if rules:
                    ignore[pair[1]] = Ignore(
                        rects=tuple(rect for rule in rules for rect in rule.rects),
                        masks=tuple(resolve_under(self.settings.image_root, rule.mask) for rule in rules if rule.mask),
                    )
                pairs.append(pair)
                todo.append(comparison)
            except ImageError as exc:
                refused.append((comparison, Measurement(ref=comparison.ref, cand=comparison.cand, error=str(exc))))
        if refused:
            self._record(refused, False, retry)
        scoring = Scoring(region_px=options.region_px, area_level=options.area_level, ignore=ignore,
                          resize=options.resize, exposure=options.exposure)
        measured = self.models.measure(pairs, net=run.net, version=run.version, precision=run.precision, with_map=maps,
                                       scoring=scoring)
        self._record(list(zip(todo, measured)), maps, retry)

    def _record(self, outcomes: list[tuple[Comparison, Measurement]], maps: bool, retry: list[int]) -> None:
        """Every outcome of a batch in one transaction: one commit, not one per pair."""
        results = [
            {"comparison_id": c.id, "distance": m.distance, "net": m.net, "weights_version": m.weights_version,
             "precision": m.precision, "layers": m.layers, "decode_ms": m.decode_ms, "model_ms": m.model_ms,
             "scores": m.scores or None, "regions": m.regions if m.scores else None,
             "heatmap_png": _heatmap(m) if maps else None, "ref_sha256": m.ref_sha256, "cand_sha256": m.cand_sha256}
            for c, m in outcomes if m.error is None
        ]

        def write(session: Session) -> list[bool]:
            done = iter(repo.record_results(session, results=results))
            return [
                next(done) if m.error is None
                else repo.record_error(session, comparison_id=c.id, reason=m.error, final=m.final)
                for c, m in outcomes
            ]

        written = self.store.run(write, what="record")
        for (comparison, m), recorded in zip(outcomes, written, strict=True):
            if m.error is None:
                outcome = "done"
                log.info(
                    "comparison done",
                    comparison_id=comparison.id,
                    recorded=recorded,
                    net=m.net,
                    distance=m.distance,
                    ms=round(m.decode_ms + m.model_ms, 1),
                )
            else:
                outcome = "error" if m.final else "retry"
                if not m.final:
                    retry.append(comparison.id)
                log.warning("comparison failed", comparison_id=comparison.id, final=m.final, error=m.error)
            self.held.discard(comparison.id)
            if self.finished is not None:
                self.finished(outcome, m.net, (m.decode_ms + m.model_ms) / 1e3 if outcome == "done" else None)

    def _release(self, reason: str, retry: list[int]) -> None:
        """Hand back what this process still holds; if the store is down, the keeper does it later.
        Under the lock until the rows are queued: a sweep in between would find them running and held
        by no task, and re-send them as leftovers in one message, slow pair and batch-mates together."""
        with self.lock:
            held = sorted(self.held)
            try:
                self.store.run(
                    lambda session: [repo.record_error(session, comparison_id=i, reason=reason, final=False)
                                     for i in held],
                    what="release",
                    retry=False,
                )
                retry.extend(held)
            except STORE_ERRORS as exc:
                log.error("could not hand comparisons back; the keeper will", ids=held, error=str(exc.orig).strip())
            finally:
                self.held = set()

    def release_leftovers(self) -> list[int]:
        """Rows running under this process's name that no task holds: their task ended while the
        store was unreachable. Queued again; the caller re-sends them."""
        reason = f"handed back by {self.name}: its task ended while the store was unreachable"
        with self.lock:

            def release(session: Session) -> list[int]:
                rows = [c.id for c in repo.running_under(session, worker=self.name) if c.id not in self.held]
                for comparison_id in rows:
                    repo.record_error(session, comparison_id=comparison_id, reason=reason, final=False)
                return rows

            return self.store.run(release, what="release_leftovers", retry=False)


def _heatmap(m: Measurement) -> bytes | None:
    from worker.heatmap import heatmap_png  # Pillow, only for runs that ask for maps

    return heatmap_png(m.map) if m.map is not None and m.finite else None
