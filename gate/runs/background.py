"""Submitting runs from a long-lived process (the HTTP API): it answers with the run id at once, so
without a broker the embedded executor's work goes to one background thread, run after run (with a
broker, `make_dispatch` queues within the request). A background dispatch that fails leaves its
comparisons as errors, so no reader waits for them; a restarted server resumes what was left queued."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import timedelta

import structlog
from sqlalchemy import Engine, select

from gate.errors import GateError
from gate.runs.service import Dispatch, RunSpec, confined_pairs, folder_pairing, give_up, make_dispatch, store_run
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import session_scope
from gate.store.models import Comparison

log = structlog.get_logger(__name__)


class BackgroundDispatch:
    """`dispatch(engine, run_id, ids)` without a broker: the embedded engine computes the runs one
    after another in this process's worker thread. `close()` stops it once the runs handed over are done."""

    def __init__(self, settings: Settings) -> None:
        self._dispatch: Dispatch = make_dispatch(settings.model_copy(update={"broker_url": None}))
        self._work: queue.Queue[tuple[Engine, int, list[int]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, engine: Engine, run_id: int, ids: list[int]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="lpips-gate-embedded", daemon=True)
                self._thread.start()
        self._work.put((engine, run_id, ids))

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._work.put(None)
            thread.join()

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            engine, run_id, ids = item
            try:
                self._dispatch(engine, run_id, ids)
            except Exception as exc:  # noqa: BLE001  (one failing run must not stop the runs after it)
                log.error("run_dispatch_failed", run=run_id, error=str(exc))
                give_up(engine, ids, reason=f"not computed: {exc}")


def accept_run(settings: Settings, engine: Engine, dispatcher: Callable[[], Dispatch], spec: RunSpec, *,
               folders: tuple[str, str] | None = None, pairs: list[tuple[str, str]] | None = None) -> int:
    """Store a run of two folders, or of explicit pairs, given relative to the image root, and hand
    it to the dispatch `dispatcher` gives once the paths are accepted; returns its id. Anything
    refused (a path outside the root, no such folder, no images, no broker or engine) is
    refused before the run is stored: a GateError naming the path or what is missing."""
    root = settings.image_root
    try:
        if folders is not None:
            stored, cand_dir = folder_pairing(settings, root / folders[0], root / folders[1])
        else:
            stored, cand_dir = confined_pairs(settings, pairs or []), "."
    except (OSError, ValueError) as exc:  # a name the file system refuses (too long, ...)
        raise GateError(f"paths: {exc}") from exc
    dispatch = dispatcher()
    run_id, ids = store_run(settings, engine, stored, spec, cand_dir=cand_dir)
    dispatch(engine, run_id, ids)
    return run_id


def resume_queued(settings: Settings, engine: Engine, dispatcher: Callable[[], Dispatch]) -> int:
    """Without a broker nothing else computes what a stopped server left: its queued comparisons, and
    those it was computing once their heartbeat is `orphan_after` old, are handed to `dispatcher`'s
    dispatch again, run by run (claims are atomic: a `check` computing some of them loses nothing).
    Returns how many; with a broker the workers' sweeper does this."""
    if settings.broker_url:
        return 0
    with session_scope(engine) as session:
        repo.requeue_orphans(session, older_than=timedelta(seconds=settings.orphan_after))
        queued = session.execute(select(Comparison.run_id, Comparison.id)
                                 .where(Comparison.status == "queued").order_by(Comparison.id)).all()
    by_run: dict[int, list[int]] = {}
    for run_id, comparison_id in queued:
        by_run.setdefault(run_id, []).append(comparison_id)
    if by_run:
        dispatch = dispatcher()
        for run_id, ids in by_run.items():
            dispatch(engine, run_id, ids)
    return len(queued)
