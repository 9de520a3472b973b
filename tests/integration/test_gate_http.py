"""The gate daemon's HTTP endpoints (gate.judging.http): the daemon runs as `lpips-gate gate --http-port`
in a subprocess on real PostgreSQL, judges a failing run, and its /healthz, /readyz and /metrics say so."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session

from gate.judging.daemon import STALE_GRACE_S, STALE_TICKS, Daemon
from gate.store import make_engine
from gate.store import repository as repo
from gate.store.models import Worker
from tests.integration.test_gate import SUITE, finished_run, policies, settings_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REDIS_URL = "redis://127.0.0.1:6379/0"
WAIT_S = 60.0  # a deadline against hanging, not a speed target


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def gate_metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(f"{base}/metrics")
    assert status == 200
    return samples(text)


@pytest.fixture
def gate_http(pg_url: str, tmp_path: Path) -> Iterator[str]:
    """`lpips-gate gate --http-port 0 --interval 0.2` on pg_url; yields its base URL."""
    policy = tmp_path / "gate.toml"
    policy.write_text(f"[suite.{SUITE}]\nmax_distance = 0.1\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPIPS_GATE_")}
    env.update(LPIPS_GATE_DATABASE_URL=pg_url, LPIPS_GATE_LOG_JSON="true")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "gate.cli", "gate", "--policies", str(policy), "--interval", "0.2", "--http-port", "0"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        assert daemon.stderr is not None
        lines = [json.loads(daemon.stderr.readline()) for _ in range(2)]
        assert [line["event"] for line in lines] == ["gate http listening", "gate started"]
        yield f"http://127.0.0.1:{lines[0]['port']}"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        daemon.kill()
        daemon.wait()


def test_the_gate_answers_probes_and_counts_what_it_judged(pg_url: str, gate_http: str) -> None:
    engine = make_engine(pg_url)
    try:
        with Session(engine) as session, session.begin():
            finished_run(session, [0.3])
            finished_run(session, [0.05, 0.05], queued=[0, 1])  # waits for a worker: not judged
            repo.heartbeat(session, worker="gpu-0", hostname="node-a", pid=7)
        with Session(engine) as session:
            [beat] = session.scalars(select(Worker.last_seen)).all()
    finally:
        engine.dispose()
    deadline = time.monotonic() + WAIT_S
    while gate_metrics(gate_http)[("lpips_gate_runs_judged_total", ())] < 1:
        assert time.monotonic() < deadline, "the daemon did not judge the run"
        time.sleep(0.1)
    started = time.time()
    while gate_metrics(gate_http)[("lpips_gate_last_tick_timestamp_seconds", ())] < started:
        assert time.monotonic() < deadline, "the daemon stopped ticking"
        time.sleep(0.1)
    metrics = gate_metrics(gate_http)
    assert metrics[("lpips_gate_runs_judged_total", ())] == 1
    assert {v: metrics[("lpips_gate_verdicts_total", (("verdict", v),))] for v in ("pass", "fail", "error")} == {
        "pass": 0, "fail": 1, "error": 0,
    }
    assert metrics[("lpips_gate_open_alerts", (("rule", "distance"),))] == 1
    assert metrics[("lpips_gate_open_alerts", (("rule", "drift"),))] == 0
    assert metrics[("lpips_gate_evaluation_seconds_count", ())] == 1
    assert metrics[("lpips_gate_webhook_failures_total", ())] == 0
    assert metrics[("lpips_gate_tick_failures_total", ())] == 0
    assert metrics[("lpips_gate_comparisons_queued", ())] == 2
    assert metrics[("lpips_gate_last_worker_heartbeat_timestamp_seconds", ())] == beat.timestamp()
    assert get(f"{gate_http}/healthz") == (200, "ok\n")
    assert get(f"{gate_http}/readyz") == (200, "ok\n")
    assert get(f"{gate_http}/nothing")[0] == 404


def test_healthz_fails_once_the_loop_stops_ticking() -> None:
    now = [1000.0]
    daemon = Daemon(make_engine("sqlite://"), policies(), settings_for("sqlite://"), clock=lambda: now[0])
    daemon.last_beat, daemon.stale_after_s = now[0], STALE_TICKS * 10.0 + STALE_GRACE_S
    now[0] += daemon.stale_after_s
    assert daemon.alive()
    now[0] += 0.001
    assert not daemon.alive()


def test_a_store_outage_is_not_ready_and_not_a_completed_pass_but_the_loop_lives() -> None:
    missing = make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/lpips_gate_test_never_created")
    daemon = Daemon(missing, policies(), settings_for("sqlite://"))
    before = {name: REGISTRY.get_sample_value(name) for name in ("lpips_gate_tick_failures_total",
                                                                  "lpips_gate_last_tick_timestamp_seconds")}
    try:
        assert not daemon.ready()
        assert daemon.tick() == {"evaluated": 0, "sent": 0}
    finally:
        missing.dispose()
    assert daemon.alive()
    assert REGISTRY.get_sample_value("lpips_gate_tick_failures_total") == before["lpips_gate_tick_failures_total"] + 1
    assert REGISTRY.get_sample_value("lpips_gate_last_tick_timestamp_seconds") == (
        before["lpips_gate_last_tick_timestamp_seconds"]
    )


SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "unknown": ("",)}


def exported_names(text: str) -> set[str]:
    """Every sample name a Prometheus text exposition can have, samples present or not."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES[family.type]
    }


def worker_exposition() -> str:
    """What a worker's /metrics serves (worker.metrics: its counters, histogram and the queue depth)."""
    from worker import metrics as worker_metrics

    registry = CollectorRegistry()
    for collector in (worker_metrics.PAIRS, worker_metrics.PAIR_SECONDS, *worker_metrics.EVENTS.values()):
        registry.register(collector)
    registry.register(worker_metrics.QueueDepth(redis.Redis.from_url(REDIS_URL), "lpips.metrics-names"))
    return generate_latest(registry).decode()


def queried_names(expr: str) -> set[str]:
    return set(re.findall(r"\blpips_gate_[a-zA-Z0-9_]+", expr))


def test_every_metric_the_rules_and_the_dashboard_query_is_exported(gate_http: str) -> None:
    exported = exported_names(get(f"{gate_http}/metrics")[1]) | exported_names(worker_exposition())
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text(encoding="utf-8"))
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "lpips-gate.json").read_text(encoding="utf-8"))
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) == 5 + 18  # every rule and every panel query
    for expr in exprs:
        assert queried_names(expr), f"{expr!r} queries no lpips-gate metric"
        assert queried_names(expr) <= exported, f"{expr!r}: not exported: {queried_names(expr) - exported}"
