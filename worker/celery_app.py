"""The Celery adapter: the `lpips_gate.compare` task runs the broker-agnostic `Processor`
(worker/processor.py), with the `Keeper` (worker/keeper.py) beside it in each pool process.

- Messages are checked against the queue contract before any work: a malformed envelope is discarded
  by `guarded_strategy` before Celery reads it, malformed arguments are rejected by the task.
- Models load once per worker process, in `worker_process_init` (after the fork: the prefork parent
  never touches CUDA).
- Transient failures go back as new messages with a countdown; the sweeper re-sends through this
  app, skips ids still in a Redis message and takes a Redis lock (per store) so one worker sweeps per period."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import structlog
from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, signals
from celery.exceptions import InvalidTaskError, Reject
from celery.worker.strategy import default as default_strategy
from kombu.exceptions import OperationalError as BrokerError
from redis import RedisError

from gate.logs import get_logger
from gate.runs.queue import TASK_COMPARE, enqueue, ids_in_flight, make_celery, redis_client
from gate.settings import Settings
from gate.store import repository as repo
from worker import decoding, metrics
from worker.keeper import Keeper, Sweeper, beat, heartbeat_interval_s, sweep_period_s
from worker.processor import Processor, Requeue, Store, worker_name
from worker.runtime import Counters, Models, TimeUp
from worker.tuning import IdleTrim, tune_process

MAX_IDS_PER_MESSAGE = 1000
SWEEP_LOCK_PREFIX = "lpips_gate:sweep:"  # + the store key: one sweeper a period per store, not per broker
TIME_UP: TimeUp = (SoftTimeLimitExceeded,)  # billiard's soft time limit: hand the pairs back, do not retry

log = get_logger("lpips_gate.worker")


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


def celery_sweeper(settings: Settings, *, app: Celery, store: Store, processor: Processor) -> Sweeper:
    """The sweeper sending through `app`. On Redis it re-sends only ids in no waiting or unacknowledged
    message, and one worker a period sweeps (a lock that expires before the next turn); on other
    brokers every long-queued id is re-sent, by every worker."""

    def send(ids: list[int]) -> None:
        enqueue(app, ids, per_message=settings.pairs_per_message)

    client = redis_client(settings.broker_url)
    if client is None:
        return Sweeper(settings, store=store, processor=processor, send=send)
    queue = app.conf.task_default_queue
    ttl_ms = int(sweep_period_s(settings) * 900)  # expires before this worker's next turn

    def lock() -> bool:
        key = store.run(repo.store_key, what="store key")
        return bool(client.set(SWEEP_LOCK_PREFIX + key, processor.name, nx=True, px=ttl_ms))

    return Sweeper(
        settings, store=store, processor=processor, send=send, in_flight=lambda: ids_in_flight(client, queue), lock=lock
    )


class WorkerProcess:
    """What one worker process holds: built after the fork by `start`, used by every task."""

    def __init__(self, settings: Settings, app: Celery, *, precision: str | None = None, threads: int | None = None):
        self.settings, self.app, self.precision, self.threads = settings, app, precision, threads
        self.processor: Processor | None = None
        self.keeper: Keeper | None = None
        self.trim = IdleTrim(settings.idle_trim_s) if settings.idle_trim_s else None

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
            self.settings,
            counters=Counters(listener=metrics.count_event),
            device=device,
            precision=self.precision,
            time_up=TIME_UP,
        )
        self.processor = Processor(
            self.settings,
            store=store,
            models=models,
            name=name,
            requeue=send_later(self.app, self.settings.pairs_per_message),
            finished=metrics.pair_finished,
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
            sweep=celery_sweeper(self.settings, app=self.app, store=store, processor=self.processor),
            sweep_every_s=sweep_period_s(self.settings),
        ).start()

    def stop(self, **_signal: Any) -> None:
        if self.keeper is not None:
            self.keeper.stop()
        if self.trim is not None:
            self.trim.stop()
        decoding.shutdown()  # a pool process exits with os._exit: atexit would not run

    def handle(self, task_id: str | None, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        try:
            ids = comparison_ids(args, kwargs)
        except ValueError as exc:
            log.error("malformed message rejected", task_id=task_id, error=str(exc))
            raise Reject(str(exc), requeue=False) from None
        if self.processor is None:
            raise RuntimeError("worker process not initialised (worker_process_init did not run)")
        started = time.perf_counter()
        if self.trim is not None:
            self.trim.busy()
        try:
            with structlog.contextvars.bound_contextvars(task_id=task_id):
                self.processor.process(ids)
                log.info("task done", comparisons=len(ids), seconds=round(time.perf_counter() - started, 3))
        finally:
            if self.trim is not None:
                self.trim.idle()


def _pin_device(device: str) -> str:
    """GPU workers: pool process i uses GPU i (mod the count). Runs in the child, after the fork."""
    import torch
    from billiard.process import current_process

    if device == "cpu" or not torch.cuda.is_available():
        return device  # "auto" resolves to the CPU; "cuda" without one fails, with its reason, when models load
    index = getattr(current_process(), "index", 0) or 0
    torch.cuda.set_device(index % torch.cuda.device_count())
    return "cuda"


def create_app(
    settings: Settings, *, queue: str, precision: str | None = None, threads: int | None = None
) -> Celery:
    """The worker's Celery app consuming `queue` (the store's: `gate.runs.queue.store_queue`) with the
    compare task; models load in each pool process."""
    app = make_celery(settings, queue=queue)
    app.conf.worker_proc_alive_timeout = 300  # a pool process loads its models before it reports up
    process = WorkerProcess(settings, app, precision=precision, threads=threads)

    @app.task(name=TASK_COMPARE, bind=True, Strategy="worker.celery_app:guarded_strategy")
    def compare(self, *args: Any, **kwargs: Any) -> None:
        process.handle(self.request.id, args, kwargs)

    signals.worker_process_init.connect(process.start, weak=False)
    signals.worker_process_shutdown.connect(process.stop, weak=False)
    return app
