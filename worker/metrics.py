"""Prometheus metrics of a worker, served on `settings.metrics_port` by the worker's main process.

Prefork children count in prometheus_client's multiprocess mode: `lpips-gate worker` points
PROMETHEUS_MULTIPROC_DIR at a fresh folder before this module is imported, so the parent's endpoint
adds up every child. The queue depth is read from Redis when scraped."""

from __future__ import annotations

import base64
import json
import os
from urllib.parse import urlsplit

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily

KOMBU_PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Redis transport keeps priority p > 0 in "<queue>\x06\x16<p>"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)

PAIRS = Counter(
    "lpips_gate_pairs",
    "Comparisons finished by workers, by outcome (done, error, retry) and backbone",
    ["outcome", "net"],
)
PAIR_SECONDS = Histogram(
    "lpips_gate_pair_seconds",
    "Decode plus model time of one computed pair",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENTS = {
    "retries": Counter("lpips_gate_retries", "Forward passes tried again after a transient error"),
    "oom_halvings": Counter("lpips_gate_oom_halvings", "Batches halved after running out of memory"),
    "fallbacks": Counter("lpips_gate_fallbacks", "Pairs computed by the fallback backbone"),
}


def count_event(name: str, n: int) -> None:
    """`runtime.Counters.listener`."""
    EVENTS[name].inc(n)


def pair_finished(outcome: str, net: str | None, seconds: float | None) -> None:
    PAIRS.labels(outcome, net or "none").inc()
    if seconds is not None:
        PAIR_SECONDS.observe(seconds)


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
    try:
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        return [i for i in kwargs["comparison_ids"] if type(i) is int]
    except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
        return []


class QueueDepth:
    """Collector: the depth when scraped; absent while Redis cannot be reached."""

    def __init__(self, client: redis.Redis, queue: str):
        self.client, self.queue = client, queue

    def collect(self):
        try:
            depth = queue_depth(self.client, self.queue)
        except redis.RedisError:
            return
        yield GaugeMetricFamily("lpips_gate_queue_depth", f"Messages waiting in the {self.queue!r} queue", value=depth)


def serve(settings, *, queue: str) -> CollectorRegistry:
    """Start the HTTP endpoint in this (the main) process; with several processes, their sum."""
    if settings.metrics_port is None:
        raise ValueError("metrics_port is not set (LPIPS_GATE_METRICS_PORT)")
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    client = redis_client(settings.broker_url)
    if client is not None:
        registry.register(QueueDepth(client, queue))
    start_http_server(settings.metrics_port, registry=registry)
    return registry
