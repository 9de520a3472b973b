"""Nothing is lost and nothing is written twice, whatever happens to a worker, the broker or the
database: each scenario runs real `lpips-gate worker` processes against real Redis and PostgreSQL,
reports submitted / stored / lost / duplicated / errored and the recovery time (tests/reliability/
report.py), and asserts lost = 0 and duplicated = 0.

Duplicates are counted twice over: rows (one per comparison, one layer row per backbone layer) and
the "comparison done" log lines whose `recorded` is true, per comparison id, over every worker. A
test-only slow pair (tests/support/faults.py) holds a worker inside a known batch, so a fault
always strikes mid-batch instead of whenever a poll happens to look."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import redis as redis_client

from gate.runs.queue import enqueue, queue_depth, store_queue_at
from gate.store.migrate import upgrade
from tests.cluster import (
    ALEX_LAYERS,
    StoreView,
    Worker,
    base_settings,
    engine_distances,
    publish_raw,
    recorded,
    wait_for,
    worker_env,
)
from tests.integration.services import PrivatePostgres, PrivateRedis, producer, write_pairs
from tests.reliability.report import count
from tests.support.faults import Faults

SLOW = ".slow.png"
POISON = ".poison.png"


def slow_pair(root, name: str = "slow") -> tuple[str, str]:
    (pair,) = write_pairs(root, 1, prefix=name, first_seed=1000, poison=(0,), poison_suffix=SLOW)
    return pair


def ready(*workers: Worker) -> None:
    wait_for(lambda: all(w.ready() for w in workers), "every worker's pool process to load its model", *workers)


def holder(store: StoreView, comparison_id: int, workers: list[Worker]) -> Worker:
    """The worker whose pool process has the comparison claimed."""
    name = store.row(comparison_id).worker
    (found,) = [w for w in workers if name in w.pool_names()]
    return found


def claimed_by(store: StoreView, run_id: int, worker: Worker) -> list[int]:
    return [r.id for r in store.rows(run_id) if r.status == "running" and r.worker in worker.pool_names()]


def figures(report, scenario, store, run_ids, workers, times, *, expected_errors=(), **notes):
    """Counted and reported now, just after the scenario's last wait; `times` = (started, fault_at).
    Every scenario also notes the claims beyond each comparison's first and the pool processes that
    had to be started again (each reloads its model)."""
    finished_at, (started, fault_at) = time.monotonic(), times
    rows = store.rows(*run_ids)
    notes |= {
        "extra_claims": sum(r.attempts - 1 for r in rows if r.attempts),
        "pool_restarts": sum(len(w.pool_names()) - 1 for w in workers),
    }
    return report.add(
        count(
            scenario,
            [(r.id, r.status) for r in rows],
            recorded(*workers),
            expected_errors=expected_errors,
            recovery_s=None if fault_at is None else finished_at - fault_at,
            wall_s=finished_at - started,
            **notes,
        )
    )


def assert_clean(result, store: StoreView, run_ids, workers) -> None:
    """lost = 0, duplicated = 0, one layer row per layer of every done comparison, each written once."""
    done = [r.id for r in store.rows(*run_ids) if r.status == "done"]
    assert (result.lost, result.duplicated) == (0, 0), result
    assert store.layer_rows(*run_ids) == ALEX_LAYERS * len(done)
    assert {i: n for i, n in recorded(*workers).items() if i in done} == dict.fromkeys(done, 1)


@dataclass
class SlowBatch:
    """Two workers on one run; one of them holds the message with the slow pair, not yet recorded."""

    store: StoreView
    pairs: list[tuple[str, str]]
    run_id: int
    ids: list[int]
    fleet: list[Worker]
    victim: Worker  # the one holding the slow pair's message
    survivor: Worker
    batch: list[int]  # what the victim has claimed
    started: float


def slow_batch_in_hand(pg_url, weights_dir, images, servers, workers, *, good: int, slow_at: int, slow_s: float):
    redis = servers(PrivateRedis)
    made = write_pairs(images, good)
    pairs = made[:slow_at] + [slow_pair(images)] + made[slow_at:]
    settings = base_settings(pg_url, redis.url, weights_dir, images)
    slow = Faults(slow_suffix=SLOW, slow_s=slow_s)
    store = StoreView(pg_url)
    fleet = [workers(worker_env(settings, slow), "a"), workers(worker_env(settings, slow), "b")]
    ready(*fleet)
    run_id, ids = store.create_run(pairs)
    started = time.monotonic()
    enqueue(producer(redis.url, store.url), ids, per_message=4)
    wait_for(lambda: store.row(ids[slow_at]).status == "running", "the slow pair's batch to be claimed", *fleet)
    victim = holder(store, ids[slow_at], fleet)
    (survivor,) = [w for w in fleet if w is not victim]
    batch = claimed_by(store, run_id, victim)
    return SlowBatch(store, pairs, run_id, ids, fleet, victim, survivor, batch, started)


def test_worker_sigkill_mid_batch(pg_url, weights_dir, images, servers, workers, report):
    """One of two workers dies mid-batch; the survivor's sweeper re-queues the batch once the dead
    one's heartbeat is `orphan_after` old."""
    run = slow_batch_in_hand(pg_url, weights_dir, images, servers, workers, good=36, slow_at=18, slow_s=2)
    store, ids = run.store, run.ids
    killed_at = time.monotonic()
    run.victim.kill()
    wait_for(lambda: store.finished(run.run_id), "every comparison to finish", run.survivor)
    result = figures(
        report, "worker SIGKILL mid-batch", store, [run.run_id], run.fleet, (run.started, killed_at),
        in_batch_at_kill=len(run.batch),
    )

    assert run.batch == ids[16:20]  # the slow pair's whole message, claimed and not yet recorded
    assert_clean(result, store, [run.run_id], run.fleet)
    rows = store.rows(run.run_id)
    assert {r.id: (r.status, r.attempts) for r in rows} == {i: ("done", 2 if i in run.batch else 1) for i in ids}
    assert [r.distance for r in rows] == pytest.approx(engine_distances(weights_dir, images, run.pairs), abs=1e-5)
    assert result.recovery_s < 60
    store.dispose()


def test_worker_sigterm_finishes_the_task_in_hand(pg_url, weights_dir, images, servers, workers, report):
    """SIGTERM to a worker's main process (a supervisor's stop): Celery's warm shutdown lets the task
    in hand finish and record, then the worker exits 0; the other worker takes what was left."""
    run = slow_batch_in_hand(pg_url, weights_dir, images, servers, workers, good=24, slow_at=10, slow_s=3)
    store, ids, victim = run.store, run.ids, run.victim
    stopped_at = time.monotonic()
    victim.terminate()
    exit_s = wait_for(lambda: not victim.alive, "the terminated worker to exit", run.survivor, deadline_s=60)
    wait_for(lambda: store.finished(run.run_id), "every comparison to finish", run.survivor)
    result = figures(
        report, "worker SIGTERM (warm shutdown)", store, [run.run_id], run.fleet, (run.started, stopped_at),
        exit_s=round(exit_s, 2),
    )

    assert run.batch == ids[8:12]
    assert victim.popen.returncode == 0, victim.tail()
    assert_clean(result, store, [run.run_id], run.fleet)
    assert {r.id: (r.status, r.attempts) for r in store.rows(run.run_id)} == {i: ("done", 1) for i in ids}
    assert {i: recorded(victim)[i] for i in run.batch} == dict.fromkeys(run.batch, 1)  # finished by the victim itself
    assert exit_s < 30
    store.dispose()


def test_redis_restart_loses_no_comparison(pg_url, weights_dir, images, servers, workers, report):
    """A non-persistent broker restarts with the worker busy: every queued message is gone, and the
    sweeper re-sends the comparisons the store still has queued."""
    redis = servers(PrivateRedis)
    good = write_pairs(images, 32)
    pairs = good[:4] + [slow_pair(images)] + good[4:]
    settings = base_settings(pg_url, redis.url, weights_dir, images)
    store = StoreView(pg_url)
    worker = workers(worker_env(settings, Faults(slow_suffix=SLOW, slow_s=2)), "worker")
    ready(worker)
    run_id, ids = store.create_run(pairs)

    started = time.monotonic()
    enqueue(producer(redis.url, store.url), ids, per_message=4)
    wait_for(lambda: store.row(ids[4]).status == "running", "the slow pair's batch to be claimed", worker)
    waiting = queue_depth(redis_client.Redis.from_url(redis.url), store_queue_at(store.url))
    restarted_at = time.monotonic()
    redis.restart()
    wait_for(lambda: store.finished(run_id), "every comparison to finish", worker)
    resent = sum(e["total"] for e in worker.events("re-sent comparisons"))
    result = figures(
        report,
        "Redis restart",
        store,
        [run_id],
        [worker],
        (started, restarted_at),
        messages_lost=waiting,
        resent=resent,
    )

    assert waiting == 7  # the messages behind the slow one's, all lost with the restart
    assert_clean(result, store, [run_id], [worker])
    assert [r.status for r in store.rows(run_id)] == ["done"] * len(ids)
    assert resent >= 25  # the comparisons of the 7 lost messages (6 of 4, 1 of 1), sent again by the sweeper
    store.dispose()


def test_postgres_restart_mid_write(weights_dir, images, servers, workers, report):
    """The database goes down while the worker claims and records; its store retries until it is
    back, and an outcome written in a transaction whose commit went unanswered is not written twice."""
    redis, postgres = servers(PrivateRedis), servers(PrivatePostgres)
    upgrade(postgres.url)
    pairs = write_pairs(images, 48)
    settings = base_settings(postgres.url, redis.url, weights_dir, images)
    store = StoreView(postgres.url)
    worker = workers(worker_env(settings), "worker")
    ready(worker)
    run_id, ids = store.create_run(pairs)

    started = time.monotonic()
    enqueue(producer(redis.url, store.url), ids, per_message=4)
    wait_for(lambda: store.done(run_id) >= 8, "8 comparisons done", worker)
    store.dispose()
    stopped_at = time.monotonic()
    postgres.stop()  # a fast shutdown: every connection is cut, mid-transaction
    wait_for(lambda: store_retries(worker), "the worker to retry a claim or a write", worker, deadline_s=30)
    postgres.start()
    wait_for(lambda: store.finished(run_id), "every comparison to finish", worker)
    result = figures(
        report,
        "PostgreSQL restart mid-write",
        store,
        [run_id],
        [worker],
        (started, stopped_at),
        store_retries=len(store_retries(worker)),
    )

    assert_clean(result, store, [run_id], [worker])
    assert [r.status for r in store.rows(run_id)] == ["done"] * len(ids)
    store.dispose()


def store_retries(worker: Worker) -> list[dict]:
    return [e for e in worker.events("store unreachable; retrying") if e["what"] in ("claim", "record", "run")]


def test_poison_messages_end_as_errors_and_the_worker_keeps_serving(
    pg_url, weights_dir, images, servers, workers, report
):
    """Two kinds of poison: an input that fails every attempt (recorded as an error after
    max_attempts) and envelopes Celery itself cannot read (a body that is not [args, kwargs, embed],
    a message without an id), which used to crash the worker and, put back in the queue, every
    worker after it. The same pool process then serves a fresh run."""
    redis = servers(PrivateRedis)
    good = write_pairs(images, 8)
    (poison,) = write_pairs(images, 1, prefix="bad", first_seed=500, poison=(0,), poison_suffix=POISON)
    settings = base_settings(pg_url, redis.url, weights_dir, images)
    store = StoreView(pg_url)
    worker = workers(worker_env(settings, Faults(poison_suffix=POISON)), "worker")
    ready(worker)
    run_id, ids = store.create_run(good[:5] + [poison] + good[5:])

    started = time.monotonic()
    publish_raw(redis.url, store_queue_at(store.url), b'"not a list"', task_id="str-body")
    publish_raw(redis.url, store_queue_at(store.url), b'[[], {"comparison_ids": [1]}, {}]', task_id=None)
    enqueue(producer(redis.url, store.url), ids, per_message=4)
    wait_for(lambda: store.finished(run_id), "the first run to finish", worker)
    after_run, after_ids = store.create_run(write_pairs(images, 4, prefix="after", first_seed=600))
    enqueue(producer(redis.url, store.url), after_ids, per_message=4)
    wait_for(lambda: store.finished(after_run), "the run sent after the poison to finish", worker)
    result = figures(
        report, "poison message", store, [run_id, after_run], [worker], (started, started), expected_errors={ids[5]}
    )

    assert_clean(result, store, [run_id, after_run], [worker])
    rows = {r.id: r for r in store.rows(run_id, after_run)}
    assert {i: r.status for i, r in rows.items() if r.status != "done"} == {ids[5]: "error"}
    gave_up = (
        "gave up after 3 attempts: transient failure after 2 tries: RuntimeError: injected transient fault: "
        f"{images / poison[1]} ends with {POISON!r}"
    )
    assert (rows[ids[5]].attempts, rows[ids[5]].error) == (3, gave_up)
    assert [(e["task_id"], e["error"]) for e in worker.events("malformed message rejected")] == [
        ("str-body", "body must be [args, kwargs, embed], got 'not a list'"),
        (None, "headers: id must be a string, got None"),
    ]
    assert worker.alive and len(worker.pool_names()) == 1  # the same pool process throughout


def test_slow_task_past_its_soft_time_limit(pg_url, weights_dir, images, servers, workers, report):
    """A pair that never finishes in time: the soft time limit interrupts its task, its batch goes
    back to the queue one pair per message (so the good ones succeed), and after max_attempts it is
    an error naming the limit. The hard limit never fires: the pool process is never replaced."""
    redis = servers(PrivateRedis)
    good = write_pairs(images, 7)
    pairs = good[:3] + [slow_pair(images)] + good[3:]
    settings = base_settings(
        pg_url,
        redis.url,
        weights_dir,
        images,
        task_soft_time_limit=4,
        task_time_limit=150,
    )
    store = StoreView(pg_url)
    worker = workers(worker_env(settings, Faults(slow_suffix=SLOW, slow_s=120)), "worker")
    ready(worker)
    run_id, ids = store.create_run(pairs)

    started = time.monotonic()
    enqueue(producer(redis.url, store.url), ids, per_message=4)
    wait_for(lambda: store.finished(run_id), "every comparison to finish", worker)
    limits_hit = sum("Soft time limit (4s) exceeded" in line.get("event", "") for line in worker.lines())
    result = figures(
        report,
        "slow task past soft time limit",
        store,
        [run_id],
        [worker],
        (started, started),
        expected_errors={ids[3]},
        soft_limits_hit=limits_hit,
    )

    assert_clean(result, store, [run_id], [worker])
    rows = {r.id: r for r in store.rows(run_id)}
    assert (rows[ids[3]].status, rows[ids[3]].attempts, rows[ids[3]].error) == (
        "error",
        3,
        "gave up after 3 attempts: interrupted: SoftTimeLimitExceeded: SoftTimeLimitExceeded()",
    )
    mates = ids[:3]
    assert {i: (r.status, r.attempts) for i, r in rows.items() if i != ids[3]} == {
        i: ("done", 2 if i in mates else 1) for i in ids if i != ids[3]
    }
    assert limits_hit == 3  # once per attempt of the slow pair, never for a good one
    assert worker.alive and len(worker.pool_names()) == 1


def test_two_workers_racing_on_one_run(pg_url, weights_dir, images, servers, workers, report):
    """Every message is sent twice, back to back, so two workers take the same ids at the same
    moment: claiming is atomic, so each comparison is claimed (attempts) and written once."""
    redis = servers(PrivateRedis)
    pairs = write_pairs(images, 32)
    settings = base_settings(pg_url, redis.url, weights_dir, images)
    store = StoreView(pg_url)
    fleet = [workers(worker_env(settings), "a"), workers(worker_env(settings), "b")]
    ready(*fleet)
    run_id, ids = store.create_run(pairs)

    started = time.monotonic()
    app = producer(redis.url, store.url)
    for start in range(0, len(ids), 4):
        for _twin in range(2):
            enqueue(app, ids[start : start + 4], per_message=4)
    wait_for(lambda: store.finished(run_id), "every comparison to finish", *fleet)
    wait_for(lambda: sum(len(w.events("task done")) for w in fleet) >= 16, "both copies of every message", *fleet)
    tasks = [len(w.events("task done")) for w in fleet]
    result = figures(
        report, "two workers racing on one run", store, [run_id], fleet, (started, None), tasks_per_worker=tasks
    )

    assert_clean(result, store, [run_id], fleet)
    assert {r.id: (r.status, r.attempts) for r in store.rows(run_id)} == {i: ("done", 1) for i in ids}
    assert min(tasks) > 0, tasks  # both workers took messages
    store.dispose()
