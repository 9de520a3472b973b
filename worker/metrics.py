"""Prometheus metrics of a worker, served on `settings.metrics_port` by the worker's main process.

Prefork children count in prometheus_client's multiprocess mode: `lpips-gate worker` points
PROMETHEUS_MULTIPROC_DIR at a fresh folder before this module is imported, so the parent's endpoint
adds up every child. The queue depth is read from Redis (`gate.runs.queue.queue_depth`) when scraped."""

from __future__ import annotations

import os

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily

from gate.runs.queue import queue_depth, redis_client

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
