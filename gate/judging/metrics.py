"""Prometheus metrics of the gate daemon, served on its /metrics (gate.judging.http). Names are what
deploy/prometheus/rules.yml and the Grafana dashboard query; tests hold them to it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

from gate.vocabulary import ALERT_RULES, VERDICTS

RUNS_JUDGED = Counter("lpips_gate_runs_judged", "Runs the gate daemon judged")
VERDICTS_GIVEN = Counter("lpips_gate_verdicts", "Verdicts given by the gate daemon, by outcome", ["verdict"])
EVALUATION_SECONDS = Histogram(
    "lpips_gate_evaluation_seconds",
    "Time to judge one run: verdict, alerts and their delivery",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
OPEN_ALERTS = Gauge("lpips_gate_open_alerts", "Open alerts in the store, by rule (as of the last tick)", ["rule"])
ALERTS_SENT = Counter("lpips_gate_alerts_sent", "Alerts delivered to an Alertmanager (one count per alert)")
WEBHOOK_FAILURES = Counter("lpips_gate_webhook_failures", "POSTs to an Alertmanager that failed (retried next tick)")
TICK_FAILURES = Counter("lpips_gate_tick_failures", "Gate daemon passes cut short by an unavailable database")
QUEUED = Gauge("lpips_gate_comparisons_queued", "Comparisons waiting for a worker (from the store, each tick)")
LAST_WORKER_HEARTBEAT = Gauge(
    "lpips_gate_last_worker_heartbeat_timestamp_seconds",
    "Unix time of the newest worker heartbeat in the store (0 until a worker ever started)",
)
LAST_TICK = Gauge(
    "lpips_gate_last_tick_timestamp_seconds", "Unix time the gate daemon last completed a pass (the store answered)"
)

for _verdict in VERDICTS:  # every series exists from the start, so rates and rules see zeros, not gaps
    VERDICTS_GIVEN.labels(_verdict)
for _rule in ALERT_RULES:
    OPEN_ALERTS.labels(_rule)


def judged(verdict: str, seconds: float) -> None:
    RUNS_JUDGED.inc()
    VERDICTS_GIVEN.labels(verdict).inc()
    EVALUATION_SECONDS.observe(seconds)


def store_state(*, by_rule: Mapping[str, int], queued: int, last_heartbeat: datetime | None) -> None:
    """What the store said this tick: open alerts by rule (zero for rules with none), the backlog, the
    workers' newest heartbeat."""
    for rule in ALERT_RULES:
        OPEN_ALERTS.labels(rule).set(by_rule.get(rule, 0))
    QUEUED.set(queued)
    if last_heartbeat is not None:
        LAST_WORKER_HEARTBEAT.set(last_heartbeat.timestamp())


def ticked() -> None:
    LAST_TICK.set(time.time())
