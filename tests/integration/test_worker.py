"""Real `lpips-gate worker` processes against real PostgreSQL and Redis: every comparison is stored
once with the engine's distance, whatever happens to the worker, the broker or the database.

Redis is always a private server (tests/integration/services.py): a worker consuming the shared
server's queue could take other engineers' messages. PostgreSQL is the shared server (a fresh
database per test) except where it is restarted, which only a private cluster may be."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from gate.cli import main
from gate.errors import GateError
from gate.runs.queue import TASK_COMPARE, enqueue
from gate.settings import Settings
from gate.store.migrate import upgrade
from tests.cluster import (
    ALEX_LAYERS,
    StoreView,
    base_settings,
    engine_distances,
    recorded,
    wait_for,
    worker_env,
)
from tests.integration.services import (
    PrivatePostgres,
    PrivateRedis,
    copy_weights,
    free_port,
    producer,
    write_pairs,
)
from tests.support.faults import Faults
from worker.engine import Engine
from worker.service_cli import plan

POISON = ".poison.png"
SLOW = ".slow.png"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    return copy_weights(tmp_path_factory.mktemp("worker"))


def test_a_killed_worker_loses_nothing_and_duplicates_nothing(pg_url, weights_dir, tmp_path, servers, workers):
    redis = servers(PrivateRedis)
    root = tmp_path / "images"
    root.mkdir()
    good = write_pairs(root, 55, size=128, poison=(12,), poison_suffix=SLOW)  # holds its batch for 2 s
    poison = write_pairs(root, 1, size=128, prefix="q", poison=(0,), poison_suffix=POISON)
    escapes = [("../outside.png", good[0][1]), ("/etc/hostname", good[0][1])]
    settings = base_settings(pg_url, redis.url, weights_dir, root)
    faults = Faults(poison_suffix=POISON, slow_suffix=SLOW, slow_s=2)
    store = StoreView(pg_url)
    run_id, ids = store.create_run(good + poison + escapes)
    app = producer(redis.url, pg_url)
    for malformed in ({"kwargs": {"ids": ids[:1]}}, {"kwargs": {"comparison_ids": "1"}}, {"args": [ids[0]]}):
        app.send_task(TASK_COMPARE, queue=app.conf.task_default_queue, **malformed)
    assert enqueue(app, ids, per_message=4) == 15

    first = workers(worker_env(settings, faults), "first")
    # Killed inside a known batch: a fast batch could be recorded but not yet logged when the kill lands
    wait_for(lambda: store.row(ids[12]).status == "running", "the slow pair's batch to be claimed", first)
    killed_at = time.monotonic()
    first.kill()
    orphans, at_kill = store.running(run_id), store.progress(run_id)
    names_before = store.worker_names()

    second = workers(worker_env(settings, faults), "second")
    started = wait_for(lambda: store.worker_names() - names_before, "the new worker's heartbeat", second)
    wait_for(lambda: store.finished(run_id), "every comparison to finish", second)
    recovery_s = time.monotonic() - killed_at
    health = subprocess.run(
        ["lpips-gate", "health", "--check", "live", "--check", "ready", "--json"],
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    print(
        f"\nSIGKILL with {at_kill['done']} done, {len(orphans)} running, {at_kill['queued']} queued of "
        f"{len(ids)}; new worker up after {started:.1f}s; every comparison finished {recovery_s:.1f}s after the kill"
    )

    rows = {r.id: r for r in store.rows(run_id)}
    done = [r for r in rows.values() if r.status == "done"]
    assert len(rows) == len(ids) == 58 and len(done) == 55
    assert store.layer_rows(run_id) == ALEX_LAYERS * 55
    assert recorded(first, second) == Counter({r.id: 1 for r in done})
    assert [r.distance for r in done] == pytest.approx(engine_distances(weights_dir, root, good), abs=1e-5)
    assert {r.id: r.attempts for r in done} == {r.id: 2 if r.id in orphans else 1 for r in done}
    assert sorted(orphans) == ids[12:16] and recovery_s < 120  # the slow pair's message
    errors = {
        r.cand if r.ref == poison[0][0] else r.ref: (r.attempts, r.error) for r in rows.values() if r.status == "error"
    }
    gave_up = (
        f"gave up after 3 attempts: transient failure after 2 tries: RuntimeError: injected transient "
        f"fault: {root / poison[0][1]} ends with {POISON!r}"
    )
    assert errors == {
        poison[0][1]: (3, gave_up),
        "../outside.png": (1, "../outside.png: path escapes the image root"),
        "/etc/hostname": (1, "/etc/hostname: absolute path; task paths are relative to the image root"),
    }
    rejected = [e["error"] for p in (first, second) for e in p.events("malformed message rejected")]
    assert sorted(rejected) == [
        "comparison_ids: expected a non-empty list of ints, got '1'",
        "kwargs must be exactly {'comparison_ids': [...]}, got keys ['ids']",
        "positional arguments are not part of the contract, got 1",
    ]
    assert (health.returncode, json.loads(health.stdout)["healthy"]) == (0, True), health.stdout + health.stderr


def test_workers_of_another_store_on_the_same_broker_never_take_this_stores_messages(
    pg_url, pg_empty_url, weights_dir, tmp_path, servers, workers
):
    """Before each store had its own queue, a worker writing to another database took these messages,
    found none of their ids and acknowledged them: the run then crawled at the sweeper's pace. With
    orphan_after 600 s no sweep re-sends anything here, so only direct consumption finishes the run."""
    root = tmp_path / "images"
    root.mkdir()
    pairs = write_pairs(root, 32, size=64)
    upgrade(pg_empty_url)
    broker = servers(PrivateRedis).url
    other = workers(worker_env(base_settings(pg_empty_url, broker, weights_dir, root, orphan_after=600)), "other-store")
    wait_for(lambda: other.events("worker process ready"), "the other store's worker to be ready", other)
    store = StoreView(pg_url)
    run_id, ids = store.create_run(pairs)
    assert enqueue(producer(broker, pg_url), ids, per_message=4) == 8
    ours = workers(worker_env(base_settings(pg_url, broker, weights_dir, root, orphan_after=600)), "this-store")
    wait_for(lambda: store.progress(run_id)["done"] == 32, "all 32 done", ours, other)
    assert (len(ours.events("task done")), ours.events("re-sent comparisons"), other.events("task done")) == (8, [], [])
    assert [r.distance for r in sorted(store.rows(run_id), key=lambda r: r.id)] == pytest.approx(
        engine_distances(weights_dir, root, pairs), abs=1e-6
    )


def test_oom_and_a_broken_primary_in_a_solo_worker(pg_url, weights_dir, tmp_path, servers, workers):
    redis = servers(PrivateRedis)
    root = tmp_path / "images"
    root.mkdir()
    pairs = write_pairs(root, 16)
    port = free_port()
    settings = base_settings(
        pg_url,
        redis.url,
        weights_dir,
        root,
        net="vgg",
        fallback_net="alex",
        max_batch=8,
        metrics_port=port,
    )
    faults = Faults(broken_primary=True, oom_above_batch=2)
    store = StoreView(pg_url)
    run_id, ids = store.create_run(pairs, net="vgg")
    enqueue(producer(redis.url, pg_url), ids, per_message=8)
    worker = workers(worker_env(settings, faults), "faults", "--pool", "solo")  # the one-process pool, too
    wait_for(lambda: store.finished(run_id), "every comparison to finish", worker)

    rows = store.rows(run_id)
    alex_version = Engine.from_settings(Settings(weights_dir=weights_dir), net="alex").weights_version
    assert {(r.status, r.net, r.weights_version, r.precision) for r in rows} == {("done", "alex", alex_version, "fp32")}
    assert [r.distance for r in rows] == pytest.approx(engine_distances(weights_dir, root, pairs), abs=1e-5)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert {
        name: samples[(name, ())]
        for name in (
            "lpips_gate_oom_halvings_total",
            "lpips_gate_fallbacks_total",
            "lpips_gate_retries_total",
            "lpips_gate_queue_depth",
        )
    } == {
        "lpips_gate_oom_halvings_total": 4.0,  # two messages of 8: 8 -> 4 -> 2 in each
        "lpips_gate_fallbacks_total": 16.0,
        "lpips_gate_retries_total": 0.0,
        "lpips_gate_queue_depth": 0.0,
    }
    assert samples[("lpips_gate_pairs_total", (("net", "alex"), ("outcome", "done")))] == 16.0
    assert samples[("lpips_gate_pair_seconds_count", ())] == 16.0
    assert [e["net"] for e in worker.events("worker process ready")] == ["alex"]


def test_broker_and_database_restarts_lose_nothing(weights_dir, tmp_path, servers, workers):
    redis, postgres = servers(PrivateRedis), servers(PrivatePostgres)
    upgrade(postgres.url)
    root = tmp_path / "images"
    root.mkdir()
    pairs = write_pairs(root, 48, size=128)
    settings = base_settings(postgres.url, redis.url, weights_dir, root)
    store = StoreView(postgres.url)
    run_id, ids = store.create_run(pairs)
    enqueue(producer(redis.url, postgres.url), ids, per_message=4)
    worker = workers(worker_env(settings), "restarts")
    wait_for(lambda: store.progress(run_id)["done"] >= 10, "10 done", worker)

    redis_at, done_then = time.monotonic(), store.progress(run_id)["done"]
    redis.restart()  # every queued message is gone: 30 done needs the sweeper to re-send them
    redis_s = wait_for(lambda: store.progress(run_id)["done"] >= 30, "30 done after the Redis restart", worker)

    store.engine.dispose()
    postgres_at = time.monotonic()
    postgres.restart()  # every connection is cut, mid-transaction
    wait_for(lambda: store.finished(run_id), "every comparison to finish", worker)
    postgres_s = time.monotonic() - postgres_at
    print(
        f"\nRedis restarted with {done_then} of {len(ids)} done: 30 done {redis_s:.1f}s later; PostgreSQL restarted: "
        f"all done {postgres_s:.1f}s later ({time.monotonic() - redis_at:.1f}s after the Redis restart)"
    )

    rows = store.rows(run_id)
    assert [r.status for r in rows] == ["done"] * 48
    assert store.layer_rows(run_id) == ALEX_LAYERS * 48
    assert recorded(worker) == Counter({r.id: 1 for r in rows})
    assert sum(e["total"] for e in worker.events("re-sent comparisons")) > 0  # the lost messages, by the sweeper
    assert [r.distance for r in rows] == pytest.approx(engine_distances(weights_dir, root, pairs), abs=1e-5)
    store.engine.dispose()


@pytest.mark.parametrize(
    ("pool", "concurrency", "gpus", "cpus", "expected"),
    [
        ("prefork", None, 0, 16, (1, 16)),  # CPU: one process, every thread
        ("prefork", None, 2, 16, (2, 8)),  # one process per GPU
        ("prefork", 4, 0, 16, (4, 4)),
        ("solo", None, 1, 2, (1, 2)),
    ],
)
def test_worker_plan_defaults(pool, concurrency, gpus, cpus, expected):
    assert plan(pool=pool, concurrency=concurrency, gpus=gpus, cpus=cpus) == expected


def test_worker_refuses_bad_arguments_with_exit_2():
    with pytest.raises(GateError, match=r"^--pool solo runs one task at a time: --concurrency must be 1, got 2$"):
        plan(pool="solo", concurrency=2, gpus=0, cpus=2)
    no_broker = CliRunner().invoke(main, ["worker"], env={"LPIPS_GATE_BROKER_URL": None})
    message = (
        "Error: no broker configured (LPIPS_GATE_BROKER_URL); without one, `lpips-gate submit` computes in-process\n"
    )
    assert (no_broker.exit_code, no_broker.stderr) == (2, message)


def test_a_worker_refuses_a_store_that_is_not_migrated_with_exit_2(sqlite_empty_url):
    env = {"LPIPS_GATE_BROKER_URL": "redis://127.0.0.1:1/0", "LPIPS_GATE_DATABASE_URL": sqlite_empty_url,
           "LPIPS_GATE_DEVICE": "cpu"}
    refused = CliRunner().invoke(main, ["worker"], env=env)
    assert refused.exit_code == 2
    assert re.fullmatch(  # in the parentheses, SQLite's words
        rf"Error: database {re.escape(sqlite_empty_url)}: no store identity \(.+\); "
        r"is it up, and migrated \(`lpips-gate db upgrade`\)\?\n",
        refused.stderr,
    )


def test_a_metrics_port_in_use_is_refused_with_exit_2(sqlite_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = worker_env(
            {"broker_url": "redis://127.0.0.1:1/0", "database_url": sqlite_url, "metrics_port": port, "device": "cpu"}
        )
        refused = subprocess.run(
            ["lpips-gate", "worker"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert (refused.returncode, refused.stderr.splitlines()[-1]) == (
        2,
        f"Error: metrics port {port}: {os.strerror(errno.EADDRINUSE)}",
    )
