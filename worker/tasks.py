"""The worker: the `lpips_gate.compare` Celery task and what keeps a fleet of workers honest.

- `Processor` is the store-aware core (claim, resolve paths, measure, record); the embedded mode
  (worker/embedded.py) runs the same code without a broker.
- Models load once per worker process, in `worker_process_init` (after the fork: the prefork parent
  never touches CUDA).
- A `Keeper` thread per process writes the heartbeat (store and `settings.heartbeat_file`) and sweeps:
  comparisons of workers that stopped heartbeating go back to the queue, and queued comparisons
  whose message was lost (a broker restart) are sent again, so no work waits for the broker's
  one-hour visibility timeout. Duplicate messages are harmless: claiming is atomic."""

from __future__ import annotations

import contextvars
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from itertools import groupby
from typing import Any, TypeVar

import structlog
from celery import Celery, signals
from celery.exceptions import InvalidTaskError, Reject
from celery.worker.strategy import default as default_strategy
from kombu.exceptions import OperationalError as BrokerError
from redis import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from gate.logs import get_logger
from gate.runs.queue import TASK_COMPARE, enqueue, make_celery
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from gate.store.models import Comparison
from worker import metrics
from worker.engine import tune_process
from worker.images import ImageError, resolve_under
from worker.runtime import Counters, Measurement, Models

MAX_IDS_PER_MESSAGE = 1000
SWEEP_LOCK_KEY = "lpips_gate:sweep"
STALE_BATCH = 10_000  # queued comparisons re-sent per sweep at most
STORE_ERRORS = (OperationalError, InterfaceError)

log = get_logger("lpips_gate.worker")
T = TypeVar("T")


def comparison_ids(args: Sequence[Any], kwargs: dict[str, Any]) -> list[int]:
    """The message's ids, checked against the queue contract; ValueError says what is wrong."""
    if args:
        raise ValueError(f"positional arguments are not part of the contract, got {len(args)}")
    if set(kwargs) != {"comparison_ids"}:
        keys = _short(sorted(map(str, kwargs)))  # a key may be megabytes long: the error is one log line
        raise ValueError(f"kwargs must be exactly {{'comparison_ids': [...]}}, got keys {keys}")
    ids = kwargs["comparison_ids"]
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"comparison_ids: expected a non-empty list of ints, got {_short(ids)}")
    if len(ids) > MAX_IDS_PER_MESSAGE:
        raise ValueError(f"comparison_ids: at most {MAX_IDS_PER_MESSAGE} per message, got {len(ids)}")
    bad = [i for i in ids if type(i) is not int or i < 1]
    if bad:
        raise ValueError(f"comparison_ids: expected positive ints, got {_short(bad[0])}")
    return list(dict.fromkeys(ids))


def envelope_error(headers: Any, body: Any) -> str | None:
    """What makes a task message unusable before Celery reads its arguments, or None. Celery itself
    crashes on a body that is not [args, kwargs, embed] and reconnects forever on a message without
    an id; either way the message goes back to the queue and takes down the next worker too."""
    headers = headers if isinstance(headers, dict) else {}
    if not isinstance(headers.get("id"), str):
        return f"headers: id must be a string, got {_short(headers.get('id'))}"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, (list, tuple)) and len(limits) == 2 and all(_seconds_or_none(x) for x in limits)
    ):
        return f"headers: timelimit must be [hard, soft] seconds or null, got {_short(limits)}"
    if not (
        isinstance(body, (list, tuple))
        and len(body) == 3
        and isinstance(body[0], (list, tuple))
        and isinstance(body[1], dict)
        and (body[2] is None or isinstance(body[2], dict))
    ):
        return f"body must be [args, kwargs, embed], got {_short(body)}"
    return None


def _seconds_or_none(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and value >= 0)


def guarded_strategy(task, app, consumer, **options):
    """Celery's default strategy behind `envelope_error`: a malformed message is logged and
    discarded (InvalidTaskError) instead of crashing the consumer."""
    handle = default_strategy(task, app, consumer, **options)

    def guarded(message, body, ack, reject, callbacks, **kwargs):
        headers = message.headers if isinstance(message.headers, dict) else {}
        problem = envelope_error(headers, message.payload)  # undecodable or pickled: Celery refuses it first
        if problem is not None:
            task_id = headers["id"] if isinstance(headers.get("id"), str) else None
            log.error("malformed message rejected", task_id=task_id, error=problem)
            raise InvalidTaskError(problem)
        return handle(message, body, ack, reject, callbacks, **kwargs)

    return guarded


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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


Requeue = Callable[[list[int], float], None]


class Processor:
    """Claims comparisons, computes them and records every outcome once. `requeue(ids, delay_s)`
    receives the ones that failed transiently (already queued again in the store)."""

    def __init__(self, settings, *, store: Store, models: Models, name: str, requeue: Requeue):
        self.settings, self.store, self.models, self.name, self.requeue = settings, store, models, name, requeue
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
        todo, pairs, refused = [], [], []
        for comparison in comparisons:
            try:
                pairs.append(
                    (
                        resolve_under(self.settings.image_root, comparison.ref),
                        resolve_under(self.settings.image_root, comparison.cand),
                    )
                )
                todo.append(comparison)
            except ImageError as exc:
                refused.append((comparison, Measurement(comparison.ref, comparison.cand, error=str(exc))))
        if refused:
            self._record(refused, False, retry)
        measured = self.models.measure(pairs, net=run.net, version=run.version, precision=run.precision, with_map=maps)
        self._record(list(zip(todo, measured)), maps, retry)

    def _record(self, outcomes: list[tuple[Comparison, Measurement]], maps: bool, retry: list[int]) -> None:
        """Every outcome of a batch in one transaction: one commit, not one per pair."""
        results = [
            {"comparison_id": c.id, "distance": m.distance, "net": m.net, "weights_version": m.weights_version,
             "precision": m.precision, "layers": m.layers, "decode_ms": m.decode_ms, "model_ms": m.model_ms,
             "heatmap_png": _heatmap(m) if maps else None}
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
            metrics.pair_finished(outcome, m.net, (m.decode_ms + m.model_ms) / 1e3 if outcome == "done" else None)

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


class Keeper:
    """A daemon thread: `beat` every `interval_s`, `sweep` at start and every `sweep_every_s`.
    A failing call is logged and tried again on the next turn; it never stops the thread."""

    def __init__(
        self,
        *,
        interval_s: float,
        beat: Callable[[], None],
        sweep: Callable[[], None] | None = None,
        sweep_every_s: float | None = None,
    ):
        self.interval_s, self.beat, self.sweep, self.sweep_every_s = interval_s, beat, sweep, sweep_every_s
        self._stop = threading.Event()
        context = contextvars.copy_context()  # the ids bound so far (the worker's name) label its log lines
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="lpips-keeper", daemon=True)

    def start(self) -> Keeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        next_sweep = time.monotonic()
        while True:
            self._safely(self.beat, "heartbeat")
            if self.sweep is not None and time.monotonic() >= next_sweep:
                self._safely(self.sweep, "sweep")
                next_sweep = time.monotonic() + self.sweep_every_s
            if self._stop.wait(self.interval_s):
                return

    @staticmethod
    def _safely(call: Callable[[], None], what: str) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001  (a store or broker outage; next turn tries again)
            log.warning(f"{what} failed", error=f"{type(exc).__name__}: {exc}")


def heartbeat_interval_s(settings) -> float:
    """Several beats per `orphan_after`, so one late beat never makes a live worker look dead."""
    return max(0.5, min(5.0, settings.orphan_after / 6))


def beat(store: Store, name: str, heartbeat_file=None) -> Callable[[], None]:
    def once() -> None:
        if heartbeat_file is not None:  # liveness: this process's loop runs, whatever the store does
            heartbeat_file.parent.mkdir(parents=True, exist_ok=True)
            heartbeat_file.touch()
        store.run(
            lambda session: repo.heartbeat(session, worker=name, hostname=socket.gethostname(), pid=os.getpid()),
            what="heartbeat",
            retry=False,
        )

    return once


class Sweeper:
    """Re-sends work that would otherwise wait: orphans of dead workers, leftovers of this process,
    and queued comparisons whose message is gone (on Redis: in no waiting or unacknowledged message;
    on other brokers every long-queued one, as duplicates are harmless). One sweeper per period across
    the fleet (a Redis lock), since every one of them would send the same ids."""

    def __init__(self, settings, *, app: Celery, store: Store, processor: Processor):
        self.settings, self.app, self.store, self.processor = settings, app, store, processor
        self.redis = metrics.redis_client(settings.broker_url)
        self.period_s = max(1.0, settings.orphan_after / 2)

    def __call__(self) -> None:
        if not self._lock():
            return
        older_than = timedelta(seconds=self.settings.orphan_after)
        orphans = self.store.run(
            lambda session: repo.requeue_orphans(session, older_than=older_than), what="requeue_orphans", retry=False
        )
        resend = orphans + self.processor.release_leftovers()
        stale = self.store.run(
            lambda session: repo.stale_queued(session, older_than=older_than, limit=STALE_BATCH),
            what="stale_queued",
            retry=False,
        )
        if self.redis is not None:  # a long backlog is not lost work: only ids in no message are
            stale = sorted(set(stale) - metrics.ids_in_flight(self.redis, self.app.conf.task_default_queue))
        resend = sorted(set(resend) | set(stale))
        if resend:
            enqueue(self.app, resend, per_message=self.settings.pairs_per_message)
            log.info("re-sent comparisons", orphans=len(orphans), total=len(resend))

    def _lock(self) -> bool:
        if self.redis is None:
            return True
        ttl_ms = int(self.period_s * 900)  # expires before this worker's next turn
        return bool(self.redis.set(SWEEP_LOCK_KEY, self.processor.name, nx=True, px=ttl_ms))


def send_later(app: Celery, per_message: int) -> Requeue:
    """Celery requeue: new messages with a countdown. If the broker is down, the sweeper re-sends
    them once it is back (they are queued in the store)."""

    def requeue(ids: list[int], delay_s: float) -> None:
        try:
            for start in range(0, len(ids), per_message):
                app.send_task(
                    TASK_COMPARE,
                    kwargs={"comparison_ids": ids[start : start + per_message]},
                    queue=app.conf.task_default_queue,
                    countdown=delay_s,
                )
        except (BrokerError, RedisError, OSError) as exc:
            log.warning("could not re-send; the sweeper will", ids=ids, error=str(exc))

    return requeue


class WorkerProcess:
    """What one worker process holds: built after the fork by `start`, used by every task."""

    def __init__(self, settings, app: Celery, *, precision: str | None = None, threads: int | None = None):
        self.settings, self.app, self.precision, self.threads = settings, app, precision, threads
        self.processor: Processor | None = None
        self.keeper: Keeper | None = None

    def start(self, **_signal: Any) -> None:
        import torch

        name = worker_name()
        structlog.contextvars.bind_contextvars(worker=name)
        if self.threads:
            torch.set_num_threads(self.threads)
        tune_process()
        device = _pin_device(self.settings.device)
        store = Store(self.settings.database_url, retry_s=self.settings.store_retry_s)
        models = Models(
            self.settings, counters=Counters(listener=metrics.count_event), device=device, precision=self.precision
        )
        self.processor = Processor(
            self.settings, store=store, models=models, name=name, requeue=send_later(self.app, self.settings.pairs_per_message)
        )
        try:
            loaded = models.preload()
            log.info(
                "worker process ready",
                net=loaded.net,
                weights_version=loaded.engine.weights_version,
                device=str(loaded.engine.device),
                precision=loaded.engine.model.precision,
            )
        except Exception as exc:  # noqa: BLE001  (tasks then hand pairs back with the reason; health says so)
            log.error("no backbone could be loaded", error=f"{type(exc).__name__}: {exc}")
        self.keeper = Keeper(
            interval_s=heartbeat_interval_s(self.settings),
            beat=beat(store, name, self.settings.heartbeat_file),
            sweep=Sweeper(self.settings, app=self.app, store=store, processor=self.processor),
            sweep_every_s=max(1.0, self.settings.orphan_after / 2),
        ).start()

    def stop(self, **_signal: Any) -> None:
        if self.keeper is not None:
            self.keeper.stop()

    def handle(self, task_id: str | None, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        try:
            ids = comparison_ids(args, kwargs)
        except ValueError as exc:
            log.error("malformed message rejected", task_id=task_id, error=str(exc))
            raise Reject(str(exc), requeue=False) from None
        if self.processor is None:
            raise RuntimeError("worker process not initialised (worker_process_init did not run)")
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(task_id=task_id):
            self.processor.process(ids)
            log.info("task done", comparisons=len(ids), seconds=round(time.perf_counter() - started, 3))


def _pin_device(device: str) -> str:
    """GPU workers: pool process i uses GPU i (mod the count). Runs in the child, after the fork."""
    import torch
    from billiard.process import current_process

    if device == "cpu" or not torch.cuda.is_available():
        return device  # "auto" resolves to the CPU; "cuda" without one fails, with its reason, when models load
    index = getattr(current_process(), "index", 0) or 0
    torch.cuda.set_device(index % torch.cuda.device_count())
    return "cuda"


def create_app(settings, *, queue: str, precision: str | None = None, threads: int | None = None) -> Celery:
    """The worker's Celery app consuming `queue` (the store's: `gate.runs.queue.store_queue`) with the
    compare task; models load in each pool process."""
    app = make_celery(settings, queue=queue)
    app.conf.worker_proc_alive_timeout = 300  # a pool process loads its models before it reports up
    process = WorkerProcess(settings, app, precision=precision, threads=threads)

    @app.task(name=TASK_COMPARE, bind=True, Strategy="worker.tasks:guarded_strategy")
    def compare(self, *args: Any, **kwargs: Any) -> None:
        process.handle(self.request.id, args, kwargs)

    signals.worker_process_init.connect(process.start, weak=False)
    signals.worker_process_shutdown.connect(process.stop, weak=False)
    return app
