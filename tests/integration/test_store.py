"""Repository functions against real PostgreSQL and SQLite (both, via `db_url`), checked by row counts."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from gate.alerts import store as alert_store
from gate.store import repository as repo
from gate.store.db import session_scope
from gate.store.models import Alert, Comparison, LayerMetric, Suite, Worker, utcnow

PAIRS = [("a.png", "a2.png"), ("b.png", "b2.png"), ("c.png", "c2.png")]
FP32 = {"net": "alex", "version": "0.1", "precision": "fp32"}


def _stats(base: float) -> dict:
    return {
        "sparsity": base,
        "mean": base + 1,
        "std": base + 2,
        "min": base - 3,
        "max": base + 4,
        "nonfinite": 0,
        "spatial_std": base + 5,
        "dead": base / 8,
    }


LAYERS = [
    {
        "index": 0,
        "name": "features.1",
        "distance": 0.25,
        "ref_stats": _stats(0.5),
        "cand_stats": _stats(0.25),
    },
    {
        "index": 1,
        "name": "features.4",
        "distance": 0.125,
        "ref_stats": _stats(0.75),
        "cand_stats": _stats(0.5),
    },
]


def _count(session: Session, model: type, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def _new_run(session_factory: sessionmaker, pairs=PAIRS, suite: str = "smoke", **kwargs) -> int:
    with session_factory.begin() as session:
        return repo.create_run(session, suite_name=suite, pairs=pairs, **{**FP32, **kwargs}).id


def _ids(session_factory: sessionmaker, run_id: int) -> list[int]:
    with session_factory() as session:
        return [c.id for c in repo.list_comparisons(session, run_id=run_id)]


def _done(session: Session, comparison_id: int, distance: float, **kwargs) -> bool:
    return repo.record_result(
        session,
        comparison_id=comparison_id,
        distance=distance,
        net=kwargs.pop("net", "alex"),
        weights_version=kwargs.pop("weights_version", "w1"),
        precision="fp32",
        layers=LAYERS,
        **kwargs,
    )


def test_session_scope_commits_and_rolls_back(engine, session_factory) -> None:
    with session_scope(engine) as session:
        suite = repo.get_or_create_suite(session, name="kept")
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        repo.get_or_create_suite(session, name="dropped")
        raise RuntimeError("abort")
    with session_factory() as session:
        assert session.scalars(select(Suite.name)).all() == ["kept"]
    assert suite.name == "kept"  # still readable after the scope ended
    assert suite.created_at.tzinfo is UTC


def test_get_or_create_suite_is_idempotent(session_factory) -> None:
    with session_factory.begin() as session:
        first = repo.get_or_create_suite(session, name="smoke")
        again = repo.get_or_create_suite(session, name="smoke")
        assert (first.id, _count(session, Suite)) == (again.id, 1)


def test_create_run_stores_duplicate_pairs_once(session_factory) -> None:
    pairs = [*PAIRS, PAIRS[0], PAIRS[2]]
    options = {"normalize": True, "reduction": "mean"}
    run_id = _new_run(session_factory, pairs=pairs, threshold=0.2, options=options)
    with session_factory() as session:
        run = repo.get_run(session, run_id=run_id)
        comparisons = repo.list_comparisons(session, run_id=run_id)
        assert (run.suite.name, run.threshold, run.options, run.verdict) == ("smoke", 0.2, options, None)
        assert [(c.ref, c.cand, c.status, c.attempts) for c in comparisons] == [
            (*p, "queued", 0) for p in PAIRS
        ]
        assert repo.run_progress(session, run_id=run_id) == {
            "queued": 3, "running": 0, "done": 0, "error": 0, "new": 0, "missing": 0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pairs": []}, "pairs: a run needs at least one (ref, cand) pair"),
        (
            {"pairs": [("a.png", "b.png"), ("a.png", "")]},
            "pairs[1]: expected (ref, cand) as two non-empty strings, got ('a.png', '')",
        ),
        ({"pairs": PAIRS, "threshold": -0.1}, "threshold: must be a finite number >= 0, got -0.1"),
    ],
)
def test_create_run_rejects_bad_input(session_factory, kwargs, message) -> None:
    with session_factory.begin() as session, pytest.raises(ValueError) as caught:
        repo.create_run(session, suite_name="smoke", **FP32, **kwargs)
    assert str(caught.value) == message


def test_get_run_and_set_verdict_name_a_missing_run(session_factory) -> None:
    with session_factory() as session, pytest.raises(repo.NotFound, match=r"^run 999: no such run$"):
        repo.get_run(session, run_id=999)
    with session_factory() as session, pytest.raises(repo.NotFound, match=r"^run 999: no such run$"):
        repo.set_verdict(session, run_id=999, verdict="pass")


def test_set_verdict(session_factory) -> None:
    run_id = _new_run(session_factory)
    with session_factory.begin() as session:
        repo.set_verdict(session, run_id=run_id, verdict="fail")
    with session_factory() as session:
        run = repo.get_run(session, run_id=run_id)
        assert (run.verdict, run.evaluated_at.tzinfo) == ("fail", UTC)
        with pytest.raises(ValueError, match=r"^verdict: must be one of \('pass', 'fail', 'error'\) or None"):
            repo.set_verdict(session, run_id=run_id, verdict="maybe")


def test_claim_moves_queued_to_running_once(session_factory) -> None:
    run_id = _new_run(session_factory)
    ids = _ids(session_factory, run_id)
    with session_factory.begin() as session:
        claimed = repo.claim_comparisons(session, ids=ids[:2], worker="w1", max_attempts=3)
        assert [(c.id, c.status, c.attempts, c.worker) for c in claimed] == [
            (ids[0], "running", 1, "w1"),
            (ids[1], "running", 1, "w1"),
        ]
        assert claimed[0].claimed_at.tzinfo is UTC
    with session_factory.begin() as session:
        assert repo.claim_comparisons(session, ids=ids, worker="w2", max_attempts=3)[0].id == ids[2]
        assert repo.run_progress(session, run_id=run_id) == {
            "queued": 0, "running": 3, "done": 0, "error": 0, "new": 0, "missing": 0}


def test_claim_race_each_id_is_claimed_once(session_factory) -> None:
    """Worker A claims and holds its transaction open; B claims the same ids meanwhile, has to wait
    for A's row locks (SQLite: the write lock), then finds nothing left to take."""
    run_id = _new_run(session_factory, pairs=[(f"r{i}.png", f"c{i}.png") for i in range(20)])
    ids = _ids(session_factory, run_id)
    got_b: list[list[int]] = []

    def claim_b() -> None:
        with session_factory.begin() as session:
            got_b.append([c.id for c in repo.claim_comparisons(session, ids=ids, worker="b", max_attempts=3)])

    with session_factory.begin() as session:
        got_a = [c.id for c in repo.claim_comparisons(session, ids=ids, worker="a", max_attempts=3)]
        racer = threading.Thread(target=claim_b)
        racer.start()
        time.sleep(0.3)
        assert racer.is_alive()  # B is blocked behind A's uncommitted claim
    racer.join(timeout=30)
    assert (got_a, got_b) == (ids, [[]])
    with session_factory() as session:
        assert _count(session, Comparison, Comparison.worker == "a", Comparison.attempts == 1) == 20


def test_claim_gives_up_on_a_poison_input_after_max_attempts(session_factory) -> None:
    run_id = _new_run(session_factory, pairs=PAIRS[:1])
    [cid] = _ids(session_factory, run_id)
    for attempt in (1, 2):
        with session_factory.begin() as session:
            [claimed] = repo.claim_comparisons(session, ids=[cid], worker="w1", max_attempts=2)
            assert claimed.attempts == attempt
            assert repo.record_error(
                session, comparison_id=cid, reason=f"decoder crashed #{attempt}", final=False
            )
    with session_factory.begin() as session:
        assert repo.claim_comparisons(session, ids=[cid], worker="w1", max_attempts=2) == []
    with session_factory() as session:
        [comparison] = repo.list_comparisons(session, run_id=run_id)
        assert (comparison.status, comparison.attempts, comparison.error) == (
            "error",
            2,
            "gave up after 2 attempts: decoder crashed #2",
        )
        assert comparison.finished_at is not None


def test_record_error_final_and_retry(session_factory) -> None:
    run_id = _new_run(session_factory)
    ids = _ids(session_factory, run_id)
    with session_factory.begin() as session:
        repo.claim_comparisons(session, ids=ids, worker="w1", max_attempts=3)
        assert repo.record_error(session, comparison_id=ids[0], reason="bad PNG: truncated", final=True)
        assert repo.record_error(session, comparison_id=ids[1], reason="CUDA OOM", final=False)
        assert _done(session, ids[2], 0.5)
        assert not repo.record_error(session, comparison_id=ids[2], reason="late", final=True)
    with session_factory() as session:
        rows = [(c.status, c.attempts, c.error) for c in repo.list_comparisons(session, run_id=run_id)]
        assert rows == [("error", 1, "bad PNG: truncated"), ("queued", 1, "CUDA OOM"), ("done", 1, None)]
        with pytest.raises(repo.NotFound, match=r"^comparison 999: no such comparison$"):
            repo.record_error(session, comparison_id=999, reason="x", final=True)


def test_record_result_writes_once(session_factory) -> None:
    run_id = _new_run(session_factory)
    cid = _ids(session_factory, run_id)[0]
    with session_factory.begin() as session:
        assert _done(session, cid, 0.375, decode_ms=1.5, model_ms=2.5, heatmap_png=b"\x89PNG")
    with session_factory.begin() as session:
        assert not _done(session, cid, 0.999, net="vgg")
    with session_factory() as session:
        comparison = session.get_one(Comparison, cid)
        assert (comparison.status, comparison.distance, comparison.net, comparison.weights_version) == (
            "done",
            0.375,
            "alex",
            "w1",
        )
        assert (comparison.decode_ms, comparison.model_ms, comparison.heatmap_png) == (1.5, 2.5, b"\x89PNG")
        layers = repo.layer_metrics(session, run_id=run_id)
        assert [(m.comparison_id, m.layer_index, m.name, m.distance) for m in layers] == [
            (cid, 0, "features.1", 0.25),
            (cid, 1, "features.4", 0.125),
        ]
        first = layers[0]
        assert (first.ref_sparsity, first.ref_mean, first.ref_std, first.ref_min, first.ref_max) == (
            0.5,
            1.5,
            2.5,
            -2.5,
            4.5,
        )
        assert (first.cand_sparsity, first.cand_max, first.ref_nonfinite, first.cand_nonfinite) == (
            0.25,
            4.25,
            0,
            0,
        )
        assert repo.run_progress(session, run_id=run_id) == {
            "queued": 2, "running": 0, "done": 1, "error": 0, "new": 0, "missing": 0}


def test_record_result_stores_non_finite_as_null(session_factory) -> None:
    cid = _ids(session_factory, _new_run(session_factory))[0]
    layer = {
        **LAYERS[0],
        "distance": float("nan"),
        "cand_stats": {**_stats(0.5), "mean": float("inf"), "nonfinite": 7},
    }
    with session_factory.begin() as session:
        assert repo.record_result(
            session,
            comparison_id=cid,
            distance=float("nan"),
            net="alex",
            weights_version="w1",
            precision="fp32",
            layers=[layer],
        )
    with session_factory() as session:
        [metric] = session.scalars(select(LayerMetric)).all()
        assert (session.get_one(Comparison, cid).distance, metric.distance) == (None, None)
        assert (metric.cand_mean, metric.cand_std, metric.cand_nonfinite) == (None, 2.5, 7)


def test_record_result_rejects_a_layer_without_stats(session_factory) -> None:
    cid = _ids(session_factory, _new_run(session_factory))[0]
    layer = {key: value for key, value in LAYERS[0].items() if key != "cand_stats"}
    with (
        session_factory.begin() as session,
        pytest.raises(ValueError, match=r"^layers\[0\]: missing key 'cand_stats'$"),
    ):
        repo.record_result(
            session,
            comparison_id=cid,
            distance=0.1,
            net="alex",
            weights_version="w1",
            precision="fp32",
            layers=[layer],
        )
    with session_factory() as session:
        assert session.get_one(Comparison, cid).status == "queued"


def test_layer_metrics_cascade_with_their_comparison(session_factory) -> None:
    cid = _ids(session_factory, _new_run(session_factory))[0]
    with session_factory.begin() as session:
        _done(session, cid, 0.1)
    with session_factory.begin() as session:
        session.delete(session.get_one(Comparison, cid))
    with session_factory() as session:
        assert _count(session, LayerMetric) == 0


def _age_worker(session_factory, name: str, seconds: float) -> None:
    with session_factory.begin() as session:
        last_seen = datetime.now(UTC) - timedelta(seconds=seconds)
        session.execute(update(Worker).where(Worker.name == name).values(last_seen=last_seen))


def test_requeue_orphans(session_factory) -> None:
    run_id = _new_run(session_factory, pairs=[(f"r{i}.png", f"c{i}.png") for i in range(5)])
    ids = _ids(session_factory, run_id)
    with session_factory.begin() as session:
        for worker in ("stale", "alive"):
            repo.heartbeat(session, worker=worker, hostname="host", pid=1)
        for cid, worker in zip(ids[:4], ["stale", "alive", "ghost-old", "ghost-new"], strict=True):
            repo.claim_comparisons(session, ids=[cid], worker=worker, max_attempts=3)
        old = datetime.now(UTC) - timedelta(seconds=120)
        session.execute(update(Comparison).where(Comparison.worker == "ghost-old").values(claimed_at=old))
    _age_worker(session_factory, "stale", 120)
    with session_factory.begin() as session:
        assert repo.requeue_orphans(session, older_than=timedelta(seconds=30)) == [ids[0], ids[2]]
    with session_factory() as session:
        rows = [(c.status, c.error) for c in repo.list_comparisons(session, run_id=run_id)]
        assert rows == [
            ("queued", "worker stale stopped heartbeating"),
            ("running", None),
            ("queued", "worker ghost-old stopped heartbeating"),
            ("running", None),
            ("queued", None),
        ]


def test_claim_with_orphan_after_takes_over_a_dead_workers_rows(session_factory) -> None:
    ids = _ids(session_factory, _new_run(session_factory))
    with session_factory.begin() as session:
        repo.heartbeat(session, worker="dead", hostname="host", pid=1)
        repo.heartbeat(session, worker="alive", hostname="host", pid=2)
        repo.claim_comparisons(session, ids=ids[:1], worker="dead", max_attempts=3)
        repo.claim_comparisons(session, ids=ids[1:2], worker="alive", max_attempts=3)
    _age_worker(session_factory, "dead", 120)
    with session_factory.begin() as session:
        claimed = repo.claim_comparisons(
            session, ids=ids, worker="new", max_attempts=3, orphan_after=timedelta(seconds=30)
        )
        assert [(c.id, c.worker, c.attempts) for c in claimed] == [(ids[0], "new", 2), (ids[2], "new", 1)]


def test_heartbeat_upserts(session_factory) -> None:
    with session_factory.begin() as session:
        repo.heartbeat(session, worker="w1", hostname="a", pid=10)
    _age_worker(session_factory, "w1", 60)
    with session_factory.begin() as session:
        repo.heartbeat(session, worker="w1", hostname="b", pid=11)
    with session_factory() as session:
        [worker] = session.scalars(select(Worker)).all()
        age = datetime.now(UTC) - worker.last_seen
        assert (worker.name, worker.hostname, worker.pid, age < timedelta(seconds=5)) == ("w1", "b", 11, True)


def test_distances_for_the_run_and_the_drift_baseline(session_factory) -> None:
    """Newest runs first; other suites, nets, weights and unfinished rows are left out."""
    older, newer, other_suite = (_new_run(session_factory, suite=s) for s in ("smoke", "smoke", "other"))
    values = {older: [0.1, 0.2, 0.3], newer: [0.4, 0.5, 0.6], other_suite: [0.7, 0.8, 0.9]}
    with session_factory.begin() as session:
        for run_id, distances in values.items():
            ids = [c.id for c in repo.list_comparisons(session, run_id=run_id)]
            _done(session, ids[0], distances[0])
            _done(session, ids[1], distances[1], weights_version="w2")
            _done(session, ids[2], distances[2])
        repo.record_error(session, comparison_id=ids[0], reason="x", final=True)
        assert repo.run_distances(session, run_id=newer) == [0.4, 0.5, 0.6]
        baseline = {"suite_name": "smoke", "net": "alex", "weights_version": "w1"}
        assert repo.recent_distances(session, **baseline, limit=10) == [0.4, 0.6, 0.1, 0.3]
        assert repo.recent_distances(session, **baseline, limit=3) == [0.4, 0.6, 0.1]
        assert repo.recent_distances(session, **baseline, limit=10, exclude_run_id=newer) == [0.1, 0.3]
        assert repo.recent_distances(session, **{**baseline, "net": "vgg"}, limit=10) == []


def _raise_distance_alert(session: Session, labels: dict, value: float, run_id: int | None = None):
    return alert_store.upsert_open_alert(
        session, rule="distance", suite_name="smoke", labels=labels, value=value, threshold=0.2, run_id=run_id
    )


def test_upsert_open_alert_opens_once_then_refreshes(session_factory) -> None:
    run_id = _new_run(session_factory)
    with session_factory.begin() as session:
        first, opened = _raise_distance_alert(session, {"pair": "a.png", "net": "alex"}, 0.3)
    with session_factory.begin() as session:
        again, reopened = _raise_distance_alert(session, {"net": "alex", "pair": "a.png"}, 0.4, run_id)
    assert (opened, reopened, again.id, again.value, again.run_id) == (True, False, first.id, 0.4, run_id)
    assert again.last_seen_at > first.last_seen_at and again.opened_at == first.opened_at
    assert (again.suite.name, again.labels, again.state) == (
        "smoke",
        {"pair": "a.png", "net": "alex"},
        "open",
    )
    assert first.fingerprint == alert_store.alert_fingerprint(
        rule="distance", suite_name="smoke", labels={"net": "alex", "pair": "a.png"}
    )
    with session_factory() as session:
        assert _count(session, Alert) == 1


def test_resolve_reopen_list_and_notify(session_factory) -> None:
    with session_factory.begin() as session:
        kept, _ = _raise_distance_alert(session, {"pair": "a"}, 0.3)
        gone, _ = _raise_distance_alert(session, {"pair": "b"}, 0.3)
        alert_store.upsert_open_alert(
            session,
            rule="sparsity",
            suite_name="smoke",
            labels={"layer": "features.1"},
            value=0.99,
            threshold=0.95,
            run_id=None,
        )
        alert_store.upsert_open_alert(
            session,
            rule="distance",
            suite_name="other",
            labels={"pair": "b"},
            value=0.3,
            threshold=0.2,
            run_id=None,
        )
    with session_factory.begin() as session:
        resolved = alert_store.resolve_alerts(
            session, suite_name="smoke", rule="distance", keep_fingerprints=[kept.fingerprint]
        )
        assert [(a.id, a.state, a.resolved_at is not None) for a in resolved] == [(gone.id, "resolved", True)]
    with session_factory.begin() as session:
        reopened, opened = _raise_distance_alert(session, {"pair": "b"}, 0.5)
        assert (opened, reopened.id != gone.id, reopened.fingerprint) == (True, True, gone.fingerprint)
        alert_store.mark_notified(session, alert_ids=[kept.id, reopened.id])
    with session_factory() as session:
        assert [(a.rule, a.labels, a.state) for a in alert_store.list_alerts(session, suite_name="smoke")] == [
            ("distance", {"pair": "a"}, "open"),
            ("distance", {"pair": "b"}, "resolved"),
            ("sparsity", {"layer": "features.1"}, "open"),
            ("distance", {"pair": "b"}, "open"),
        ]
        assert len(alert_store.list_alerts(session)) == 5
        assert [a.id for a in alert_store.list_alerts(session, open_only=True)] == [kept.id, 3, 4, reopened.id]
        notified = [a.id for a in alert_store.list_alerts(session) if a.last_notified_at is not None]
        assert notified == [kept.id, reopened.id]
        assert alert_store.resolve_alerts(session, suite_name="smoke", rule="drift", keep_fingerprints=[]) == []


def test_partial_unique_index_allows_one_open_alert_per_fingerprint(session_factory) -> None:
    with session_factory.begin() as session:
        suite = repo.get_or_create_suite(session, name="smoke")
        row = {"rule": "drift", "suite_id": suite.id, "fingerprint": "f" * 64, "value": 1.0, "threshold": 0.5}
        session.add_all([Alert(**row, state="resolved"), Alert(**row, state="resolved"), Alert(**row)])
    with pytest.raises(IntegrityError), session_factory.begin() as session:
        session.add(Alert(**row))
    with session_factory() as session:
        assert _count(session, Alert, Alert.state == "open") == 1
        assert _count(session, Alert) == 3


def test_upsert_open_alert_rejects_unknown_rule(session_factory) -> None:
    with session_factory() as session, pytest.raises(ValueError, match=r"^rule: must be one of \("):
        alert_store.upsert_open_alert(
            session, rule="latency", suite_name="smoke", labels={}, value=1.0, threshold=0.5, run_id=None
        )


def test_record_results_writes_a_batch_once_in_order(session_factory) -> None:
    run_id = _new_run(session_factory)
    first, second, third = _ids(session_factory, run_id)
    result = {"distance": 0.25, "net": "alex", "weights_version": "w1", "precision": "fp32", "layers": LAYERS}
    with session_factory.begin() as session:
        assert _done(session, second, 0.5)
    with session_factory.begin() as session:
        written = repo.record_results(
            session,
            results=[{**result, "comparison_id": i, "distance": d} for i, d in ((third, 0.75), (second, 0.9),
                                                                                (first, float("nan")), (third, 0.1))],
        )
    assert written == [True, False, True, False]  # the done one and a repeat within the batch are not rewritten
    with session_factory() as session:
        rows = {c.id: (c.status, c.distance) for c in repo.list_comparisons(session, run_id=run_id)}
        layers = [(m.comparison_id, m.layer_index) for m in repo.layer_metrics(session, run_id=run_id)]
    assert rows == {first: ("done", None), second: ("done", 0.5), third: ("done", 0.75)}
    assert sorted(layers) == sorted((i, x) for i in (first, second, third) for x in (0, 1))


def test_record_results_stores_scores_regions_and_the_spatial_statistics(session_factory) -> None:
    first, second, third = _ids(session_factory, _new_run(session_factory))
    scores = {"mean": 0.25, "region": 0.75, "area": 0.0625, "fireflies": 12.0, "flat": 0.0, "nonfinite": 0.0,
              "outliers": float("nan")}
    regions = {"region": [96, 32, 33, 33], "fireflies": [100, 40, 37, 39]}
    result = {"distance": 0.25, "net": "alex", "weights_version": "w1", "precision": "fp32", "layers": LAYERS}
    with session_factory.begin() as session:
        assert repo.record_results(session, results=[
            {**result, "comparison_id": first, "scores": scores, "regions": regions},
            {**result, "comparison_id": second, "scores": {**scores, "outliers": 0.0}, "regions": {}},
            {**result, "comparison_id": third},  # a result without scores: a worker that does not score
        ]) == [True, True, True]
    with session_factory() as session:
        one, two, three = (session.get_one(Comparison, i) for i in (first, second, third))
        metric = session.scalars(select(LayerMetric).where(LayerMetric.comparison_id == first,
                                                           LayerMetric.layer_index == 0)).one()
    assert (one.scores, one.regions) == ({**scores, "outliers": None}, regions)  # JSON has no NaN
    assert (two.scores["outliers"], two.regions) == (0.0, {})
    assert (three.scores, three.regions) == (None, None)
    assert (metric.ref_spatial_std, metric.ref_dead, metric.cand_spatial_std, metric.cand_dead) == (
        5.5, 0.0625, 5.25, 0.03125)


def test_record_results_refuses_an_unknown_comparison_and_writes_nothing(session_factory) -> None:
    cid = _ids(session_factory, _new_run(session_factory))[0]
    result = {"distance": 0.25, "net": "alex", "weights_version": "w1", "precision": "fp32", "layers": LAYERS}
    with pytest.raises(repo.NotFound, match=r"^comparison 999: no such comparison$"):
        with session_factory.begin() as session:
            repo.record_results(session, results=[{**result, "comparison_id": cid},
                                                  {**result, "comparison_id": 999}])
    with session_factory() as session:
        assert session.get_one(Comparison, cid).status == "queued"


def test_stale_queued_counts_from_the_last_return_to_the_queue(session_factory) -> None:
    """A pair handed back after a long task is not lost: its own message is on its way."""
    run_id = _new_run(session_factory)
    waiting, handed_back, fresh = _ids(session_factory, run_id)
    long_ago = utcnow() - timedelta(minutes=5)
    with session_factory.begin() as session:
        repo.claim_comparisons(session, ids=[handed_back], worker="w1", max_attempts=3)
        session.execute(update(Comparison).values(claimed_at=long_ago, queued_at=long_ago))
        repo.record_error(session, comparison_id=handed_back, reason="interrupted", final=False)
        session.execute(update(Comparison).where(Comparison.id == fresh).values(queued_at=utcnow()))
    with session_factory() as session:
        assert repo.stale_queued(session, older_than=timedelta(seconds=30), limit=10) == [waiting]
