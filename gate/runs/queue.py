"""The queue contract between producers (light) and workers (heavy): one Celery app configuration
and task names. Producers send tasks by name, so they never import the worker.

Each store (database) has its own queue, named after the random key its migration wrote
(`lpips.<key>`): producers and workers that share a broker but not a database never take each
other's messages, which they could only acknowledge without doing the work. A fixed name
(LPIPS_GATE_QUEUE_NAME, for an autoscaler that watches the queue) keeps that guard on Redis: the first
producer or worker binds the name to its store's key, and any other store's is refused.

A message carries only comparison ids; the store is the source of truth for what to compare, so a
duplicated or redelivered message is harmless (claiming is atomic) and a lost one is recovered by
re-enqueueing what the store says is still open.

On a Redis broker the queue can be looked into (`queue_depth`, `ids_in_flight`): kombu's layout,
read by the worker's metrics and its sweeper."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis
from celery import Celery
from sqlalchemy import Engine

if TYPE_CHECKING:
    from gate.settings import Settings

TASK_COMPARE = "lpips_gate.compare"
QUEUE_PREFIX = "lpips"
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Redis transport keeps priority p > 0 in "<queue>\x06\x16<p>"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)


QUEUE_BINDING_PREFIX = "lpips_gate:queue-store:"  # + a configured queue name: the key of the store it serves


class StoreNotReady(RuntimeError):
    """The database has no store identity (it is unreachable or not migrated), or cannot use its queue."""


class QueueTaken(StoreNotReady):
    """The configured queue name is bound to another store."""


def queue_name(store_key: str) -> str:
    return f"{QUEUE_PREFIX}.{store_key[:12]}"


def store_key_of(engine: Engine) -> str:
    """The random key of the store behind `engine`."""
    from sqlalchemy.exc import SQLAlchemyError

    from gate.store import repository as repo
    from gate.store import session_scope

    try:
        with session_scope(engine) as session:
            return repo.store_key(session)
    except (SQLAlchemyError, LookupError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StoreNotReady(
            f"database {engine.url.render_as_string()}: no store identity ({reason}); "
            "is it up, and migrated (`lpips-gate db upgrade`)?"
        ) from exc


def store_queue(engine: Engine, settings: Settings | None = None) -> str:
    """The queue of the store behind `engine`: `settings.queue_name` when set (bound to this store on a
    Redis broker, see `bind_queue`), else `lpips.<store key>`."""
    key = store_key_of(engine)
    if settings is None or settings.queue_name is None:
        return queue_name(key)
    client = redis_client(settings.broker_url)
    if client is not None:
        bind_queue(client, settings.queue_name, key)
    return settings.queue_name


def bind_queue(client: redis.Redis, queue: str, store_key: str) -> None:
    """Bind `queue` to the store `store_key` unless it is bound already; QueueTaken if it is bound to
    another store (its workers would claim this store's ids in their own database)."""
    binding = QUEUE_BINDING_PREFIX + queue
    try:
        client.set(binding, store_key, nx=True)
        raw = client.get(binding)
    except redis.RedisError as exc:
        raise StoreNotReady(f"queue {queue!r}: broker unreachable to check which store it serves: {exc}") from exc
    owner = raw.decode() if isinstance(raw, bytes) else raw
    if owner is not None and owner != store_key:
        raise QueueTaken(
            f"queue {queue!r} (LPIPS_GATE_QUEUE_NAME) serves another store (key {owner[:12]}), not this "
            f"database (key {store_key[:12]}): give each store its own queue name, or delete the Redis key "
            f"{binding!r} once that store is gone"
        )


def store_queue_at(database_url: str, settings: Settings | None = None) -> str:
    """`store_queue` through an engine of its own, for a caller that holds none (a worker starting)."""
    from gate.store import make_engine

    engine = make_engine(database_url)
    try:
        return store_queue(engine, settings)
    finally:
        engine.dispose()


def make_celery(settings: Settings, *, queue: str) -> Celery:
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
        worker_send_task_events=settings.celery_events,  # for Flower: off unless asked, they cost broker traffic
        task_send_sent_event=settings.celery_events,
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


def redis_client(broker_url: str | None) -> redis.Redis | None:
    """A client for a Redis broker; None for any other broker (or none)."""
    if not broker_url or urlsplit(broker_url).scheme not in ("redis", "rediss"):
        return None
    return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)


def _priority_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps `queue`'s messages in, one per priority step."""
    return [queue if p == 0 else f"{queue}{KOMBU_PRIORITY_SEPARATOR}{p}" for p in KOMBU_PRIORITY_STEPS]


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in `queue` (all priorities); reserved or delayed ones are not counted."""
    with client.pipeline(transaction=False) as pipe:
        for key in _priority_lists(queue):
            pipe.llen(key)
        return sum(pipe.execute())


def ids_in_flight(client: redis.Redis, queue: str) -> set[int]:
    """Comparison ids of the messages waiting in `queue` or delivered and not yet acknowledged
    (kombu's `unacked` hash, which also holds countdown messages a worker keeps until their time)."""
    with client.pipeline(transaction=False) as pipe:
        for key in _priority_lists(queue):
            pipe.lrange(key, 0, -1)
        pipe.hvals("unacked")
        *waiting, unacked = pipe.execute()
    messages = [_json(raw) for batch in waiting for raw in batch]
    for raw in unacked:
        entry = _json(raw)  # [message, exchange, routing key]
        if isinstance(entry, list) and len(entry) == 3 and entry[2] == queue:
            messages.append(entry[0])
    return {i for message in messages for i in _comparison_ids(message)}


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _comparison_ids(message: object) -> list[int]:
    """The ids a task message carries; none for anything that is not a well-formed compare task."""
    if not isinstance(message, dict):
        return []
    try:
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        return [i for i in kwargs["comparison_ids"] if type(i) is int]
    except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
        return []
