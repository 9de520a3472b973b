"""The queue contract between producers (light) and workers (heavy): one Celery app configuration
and task names. Producers send tasks by name, so they never import the worker.

Each store (database) has its own queue, named after the random key its migration wrote
(`lpips.<key>`): producers and workers that share a broker but not a database never take each
other's messages, which they could only acknowledge without doing the work.

A message carries only comparison ids; the store is the source of truth for what to compare, so a
duplicated or redelivered message is harmless (claiming is atomic) and a lost one is recovered by
re-enqueueing what the store says is still open."""

from __future__ import annotations

from typing import Sequence

from celery import Celery
from sqlalchemy import Engine

TASK_COMPARE = "lpips_gate.compare"
QUEUE_PREFIX = "lpips"


class StoreNotReady(RuntimeError):
    """The database has no store identity: it is unreachable or not migrated."""


def queue_name(store_key: str) -> str:
    return f"{QUEUE_PREFIX}.{store_key[:12]}"


def store_queue(engine: Engine) -> str:
    """The queue of the store behind `engine`."""
    from sqlalchemy.exc import SQLAlchemyError

    from gate.store import repository as repo
    from gate.store import session_scope

    try:
        with session_scope(engine) as session:
            return queue_name(repo.store_key(session))
    except (SQLAlchemyError, LookupError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StoreNotReady(
            f"database {engine.url.render_as_string()}: no store identity ({reason}); "
            "is it up, and migrated (`lpips-gate db upgrade`)?"
        ) from exc


def store_queue_at(database_url: str) -> str:
    """`store_queue` through an engine of its own, for a caller that holds none (a worker starting)."""
    from gate.store import make_engine

    engine = make_engine(database_url)
    try:
        return store_queue(engine)
    finally:
        engine.dispose()


def make_celery(settings, *, queue: str) -> Celery:
    if not settings.broker_url:
        raise ValueError("no broker configured (LPIPS_GATE_BROKER_URL): work runs in-process")
    app = Celery("lpips_gate", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],  # pickle is refused
        result_serializer="json",
        task_ignore_result=True,  # results live in the store
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        task_default_queue=queue,
        worker_hijack_root_logger=False,
    )
    return app


def enqueue(app: Celery, comparison_ids: Sequence[int], *, per_message: int) -> int:
    """Send the ids to the app's queue in messages of at most `per_message`; returns the number of messages."""
    if per_message < 1:
        raise ValueError(f"per_message must be >= 1, got {per_message}")
    ids = list(comparison_ids)
    chunks = [ids[i:i + per_message] for i in range(0, len(ids), per_message)]
    for chunk in chunks:
        app.send_task(TASK_COMPARE, kwargs={"comparison_ids": chunk}, queue=app.conf.task_default_queue)
    return len(chunks)
