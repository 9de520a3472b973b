"""Judging runs (gate.judging.verdict) and the daemon (gate.judging.daemon) against real PostgreSQL and SQLite: runs
are written through the repository as a worker would, then judged; checked by verdicts, alert rows
and their exact labels and values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from gate.alerts import store as alert_store
from gate.cli import main
from gate.judging.daemon import Daemon
from gate.judging.policy import DriftPolicy, Policy, PolicySet, SuitePolicies, policy_hash, suite_policy
from gate.judging.verdict import EvaluationError, drift_by_net, evaluate_run, judge_run, pair_results
from gate.logs import configure, get_logger
from gate.settings import Settings
from gate.store import make_engine
from gate.store import repository as repo
from gate.store.models import Run

SUITE = "render"
HEALTHY = {"sparsity": 0.5, "mean": 0.5, "std": 1.0, "min": 0.0, "max": 4.0, "nonfinite": 0, "spatial_std": 0.8,
           "dead": 0.0}
DISTANCE_LABELS = {"suite": SUITE, "net": "alex", "weights_version": "w1"}


def policies(**fields) -> PolicySet:
    """One suite's policy; unknown suites get the defaults (no max_distance)."""
    return PolicySet(suites={SUITE: SuitePolicies(base=Policy(**{"max_distance": 0.1, **fields}))})


def settings_for(url: str, **fields) -> Settings:
    return Settings(database_url=url, **fields)


def layer(index: int, name: str, **cand_stats) -> dict:
    return {
        "index": index,
        "name": name,
        "distance": 0.01,
        "ref_stats": HEALTHY,
        "cand_stats": {**HEALTHY, **cand_stats},
    }


LAYERS = [layer(0, "features.1"), layer(1, "features.4")]


def finished_run(
    session: Session,
    distances: Sequence[float | None],
    *,
    suite: str = SUITE,
    layers: Sequence[dict] = LAYERS,
    threshold: float | None = None,
    errors: Sequence[int] = (),
    queued: Sequence[int] = (),
    policy: SuitePolicies | None = None,
) -> int:
    """A run of pairs p{i}.png -> c{i}.png scored as a worker would: None is a non-finite distance;
    indexes in `errors` failed, those in `queued` are still waiting; `policy` is its own, given at
    submission."""
    pairs = [(f"p{i}.png", f"c{i}.png") for i in range(len(distances))]
    run = repo.create_run(
        session, suite_name=suite, pairs=pairs, net="alex", version="0.1", precision="fp32", threshold=threshold,
        policy=None if policy is None else policy.model_dump(mode="json"),
    )
    for i, comparison in enumerate(repo.list_comparisons(session, run_id=run.id)):
        if i in errors:
            repo.record_error(session, comparison_id=comparison.id, reason="decode: truncated", final=True)
        elif i not in queued:
            distance = float("nan") if distances[i] is None else distances[i]
            repo.record_result(
                session,
                comparison_id=comparison.id,
                distance=distance,
                net="alex",
                weights_version="w1",
                precision="fp32",
                layers=layers,
            )
    return run.id


def judge(session_factory: sessionmaker, run_id: int, policyset: PolicySet, settings: Settings) -> dict:
    """As the daemon, `check` and `wait` judge: in a transaction of its own, the webhook after it."""
    return judge_run(session_factory.kw["bind"], run_id=run_id, policies=policyset, settings=settings)


def alert_rows(session_factory: sessionmaker) -> list[tuple]:
    with session_factory() as session:
        return [
            (a.rule, a.state, a.labels, a.value, a.threshold, a.annotations, a.run_id)
            for a in alert_store.list_alerts(session)
        ]


# --- verdicts and the distance alert -----------------------------------------------------------


def test_a_pair_above_threshold_fails_the_run_and_opens_one_distance_alert(session_factory, db_url) -> None:
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.05, 0.3])
    summary = judge(session_factory, run_id, policies(), settings_for(db_url))
    assert summary == {
        "run": run_id,
        "suite": SUITE,
        "verdict": "fail",
        "policy": policy_hash(suite_policy(policies(), suite=SUITE)),
        "net": "alex", "weights_version": "w1", "meta": {}, "reasons": [], "warnings": [],
        "pairs": [
            {"ref": "p0.png", "cand": "c0.png", "name": "c0.png", "status": "done", "verdict": "pass", "distance": 0.05,
             "error": None, "scores": None, "reasons": [], "where": None, "seconds": None, "warning": None},
            {"ref": "p1.png", "cand": "c1.png", "name": "c1.png", "status": "done", "verdict": "fail", "distance": 0.3,
             "error": None, "scores": None, "reasons": ["distance"], "where": None, "seconds": None, "warning": None},
        ],
    }
    assert alert_rows(session_factory) == [
        ("distance", "open", DISTANCE_LABELS, 0.3, 0.1, {"worst_pair": "p1.png -> c1.png", "failed": "1 of 2"}, run_id)
    ]
    with session_factory() as session:
        run = session.get(Run, run_id)
        assert (run.verdict, run.evaluated_at is not None) == ("fail", True)


def test_a_repeated_failure_keeps_one_alert_and_a_passing_run_resolves_it(session_factory, db_url) -> None:
    settings = settings_for(db_url)
    with session_factory.begin() as session:
        first, again, passing = (finished_run(session, d) for d in ([0.3], [0.05, 0.4], [0.05, 0.06]))
    assert judge(session_factory, first, policies(), settings)["verdict"] == "fail"
    assert judge(session_factory, again, policies(), settings)["verdict"] == "fail"
    annotations = {"worst_pair": "p1.png -> c1.png", "failed": "1 of 2"}
    assert alert_rows(session_factory) == [("distance", "open", DISTANCE_LABELS, 0.4, 0.1, annotations, again)]
    assert judge(session_factory, passing, policies(), settings)["verdict"] == "pass"
    with session_factory() as session:
        [alert] = alert_store.list_alerts(session)
        assert (alert.state, alert.value, alert.run_id, alert.resolved_at >= alert.opened_at) == (
            "resolved",
            0.4,
            again,
            True,
        )


def test_the_run_threshold_overrides_the_policy(session_factory, db_url) -> None:
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.3], threshold=0.5)
    assert judge(session_factory, run_id, policies(), settings_for(db_url))["verdict"] == "pass"
    assert alert_rows(session_factory) == []


def test_judging_a_run_twice_records_and_alerts_once(session_factory, db_url) -> None:
    settings = settings_for(db_url)
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.3])
    first = judge(session_factory, run_id, policies(), settings)
    with session_factory() as session:
        evaluated_at = session.get(Run, run_id).evaluated_at
        [alert] = alert_store.list_alerts(session)
    assert judge(session_factory, run_id, policies(), settings) == first
    with session_factory() as session:
        [again] = alert_store.list_alerts(session)
        assert session.get(Run, run_id).evaluated_at == evaluated_at
        assert (again.id, again.last_seen_at) == (alert.id, alert.last_seen_at)


def test_a_run_judged_twice_keeps_its_first_verdict_and_policy(session_factory, db_url) -> None:
    settings = settings_for(db_url)
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.05, 0.3])
    strict = suite_policy(policies(), suite=SUITE)
    first = judge(session_factory, run_id, policies(), settings)
    again = judge(session_factory, run_id, policies(max_distance=0.5), settings)  # would pass it
    assert (first["verdict"], first["policy"]) == ("fail", policy_hash(strict))
    assert again == first
    with session_factory() as session:
        run = session.get(Run, run_id)
        recorded = SuitePolicies.model_validate(run.policy)
        assert (run.verdict, run.policy_hash, recorded, policy_hash(recorded)) == (
            "fail", policy_hash(strict), strict, policy_hash(strict),
        )


def test_a_run_with_its_own_policy_is_judged_by_it_not_the_daemons(session_factory, engine, db_url) -> None:
    """As `check` and `submit --threshold` record it: the daemon's laxer policies do not apply."""
    own = suite_policy(PolicySet(), suite=SUITE, threshold=0.1)
    with session_factory.begin() as session:
        own_run = finished_run(session, [0.05, 0.3], policy=own)
        daemons_run = finished_run(session, [0.05, 0.3])
    lax = policies(max_distance=0.5)
    assert Daemon(engine, lax, settings_for(db_url)).tick() == {"evaluated": 2, "sent": 0}
    with session_factory() as session:
        judged = {run_id: session.get(Run, run_id) for run_id in (own_run, daemons_run)}
        assert [(run.verdict, run.policy_hash) for run in judged.values()] == [
            ("fail", policy_hash(own)),
            ("pass", policy_hash(suite_policy(lax, suite=SUITE))),
        ]


def test_only_the_daemon_judges_a_run_without_its_own_policy(session_factory, db_url) -> None:
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.05], threshold=None)
    with pytest.raises(EvaluationError) as caught:
        judge(session_factory, run_id, None, settings_for(db_url))  # as `check` and `wait` judge
    assert str(caught.value) == f"run {run_id}: no policy of its own: the gate daemon judges it by its policies"
    with session_factory() as session:
        assert (session.get(Run, run_id).verdict, session.get(Run, run_id).policy) == (None, None)


def test_concurrent_judges_of_one_run_apply_its_alerts_once(session_factory, engine, db_url) -> None:
    """The second judge waits for the first one's transaction, then finds the verdict set."""
    settings = settings_for(db_url)
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.3])
    done = {}
    with session_factory.begin() as first:
        evaluate_run(first, run_id=run_id, policies=policies(), settings=settings)
        second = threading.Thread(
            target=lambda: done.update(summary=judge(session_factory, run_id, policies(), settings))
        )
        second.start()
        second.join(0.5)
        assert second.is_alive()  # blocked on the first judge's write
    second.join(30)
    assert done["summary"]["verdict"] == "fail"
    with session_factory() as session:
        [alert] = alert_store.list_alerts(session)
        assert alert.last_seen_at == alert.opened_at  # opened once, never refreshed


def test_a_late_run_does_not_resolve_a_newer_runs_alert(session_factory, db_url) -> None:
    settings = settings_for(db_url)
    with session_factory.begin() as session:
        older, newer = finished_run(session, [0.05]), finished_run(session, [0.3])
    judge(session_factory, newer, policies(), settings)
    assert judge(session_factory, older, policies(), settings)["verdict"] == "pass"
    assert [(rule, state, run) for rule, state, *_, run in alert_rows(session_factory)] == [("distance", "open", newer)]


def test_failed_and_nonfinite_comparisons_are_errors(session_factory, db_url) -> None:
    nonfinite = [layer(0, "features.1", nonfinite=12, std=None), layer(1, "features.4")]
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.05, None, 0.02], errors=[2], layers=nonfinite)
    summary = judge(session_factory, run_id, policies(), settings_for(db_url))
    assert (summary["verdict"], [p["verdict"] for p in summary["pairs"]]) == ("error", ["pass", "error", "error"])
    assert [p["status"] for p in summary["pairs"]] == ["done", "done", "error"]
    assert summary["pairs"][2]["error"] == "decode: truncated"
    labels = {**DISTANCE_LABELS, "layer": "features.1", "side": "cand"}
    assert [row[:5] for row in alert_rows(session_factory)] == [("nonfinite", "open", labels, 12.0, 0.0)]


# --- feature-quality alerts --------------------------------------------------------------------


def test_dead_and_flat_layers_open_sparsity_and_variance_alerts_naming_the_layer(session_factory, db_url) -> None:
    layers = [layer(0, "features.1", std=0.0), layer(1, "features.4", sparsity=0.995)]
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.01, 0.02], layers=layers)
    assert judge(session_factory, run_id, policies(), settings_for(db_url))["verdict"] == "pass"
    rows = [
        (rule, state, labels, value, threshold, annotations)
        for rule, state, labels, value, threshold, annotations, _ in alert_rows(session_factory)
    ]
    assert rows == [
        (
            "sparsity",
            "open",
            {**DISTANCE_LABELS, "layer": "features.4", "side": "cand"},
            0.995,
            0.98,
            {"image": "c1.png", "layer_index": "1"},
        ),
        (
            "variance",
            "open",
            {**DISTANCE_LABELS, "layer": "features.1", "side": "cand"},
            0.0,
            1e-4,
            {"image": "c0.png", "layer_index": "0"},
        ),
    ]
    with session_factory.begin() as session:
        healthy = finished_run(session, [0.01])
    judge(session_factory, healthy, policies(), settings_for(db_url))
    assert [row[1] for row in alert_rows(session_factory)] == ["resolved", "resolved"]


# --- drift -------------------------------------------------------------------------------------

RUN_SIZE = 10
# The default ks_threshold (0.001) and PSI noise floor: a stable 20-run suite, checked 11 times over
# overlapping windows, opens a false drift alert in 1.6-2.4% of histories (17-19% at the former 0.01
# and chi-square floor); bench/drift_false_alarms.py --window 50 --baseline-size 100 --min-samples 50.
DRIFT = DriftPolicy(window=50, baseline_size=100, min_samples=50)


def _suite_runs(session_factory: sessionmaker, suite: str, batches: list[np.ndarray], url: str) -> list[str]:
    """Judge one run per batch in order; the drift alert's state after each ('-' when none)."""
    states = []
    for batch in batches:
        with session_factory.begin() as session:
            run_id = finished_run(session, [float(d) for d in batch], suite=suite)
        judge(session_factory, run_id, _drift_policies(suite), settings_for(url))
        with session_factory() as session:
            drift = [a.state for a in alert_store.list_alerts(session, suite_name=suite) if a.rule == "drift"]
        states.append(drift[-1] if drift else "-")
    return states


def _drift_policies(suite: str) -> PolicySet:
    return PolicySet(suites={suite: SuitePolicies(base=Policy(max_distance=1.0, drift=DRIFT))})


def test_a_shift_opens_drift_within_the_window_and_a_stable_suite_stays_quiet(session_factory, db_url) -> None:
    rng = np.random.default_rng(7)
    before, after = 15, 5  # runs of RUN_SIZE: the window (50) holds 5 runs
    shifted = [rng.normal(0.20, 0.02, RUN_SIZE) for _ in range(before)]
    shifted += [rng.normal(0.24, 0.02, RUN_SIZE) for _ in range(after)]
    stable = [rng.normal(0.20, 0.02, RUN_SIZE) for _ in range(before + after)]

    shifted_states = _suite_runs(session_factory, "shifted", shifted, db_url)
    stable_states = _suite_runs(session_factory, "stable", stable, db_url)

    assert shifted_states[:before] == ["-"] * before
    assert "open" in shifted_states[before : before + DRIFT.window // RUN_SIZE]
    assert stable_states == ["-"] * (before + after)
    with session_factory() as session:
        [drift] = [a for a in alert_store.list_alerts(session, suite_name="shifted") if a.rule == "drift"]
        last_stable = max(run.id for run in session.query(Run).join(Run.suite).filter_by(name="stable"))
        stable_check = drift_by_net(
            session,
            run=session.get(Run, last_stable),
            pairs=pair_results(session, run_id=last_stable),
            lookup=suite_policy(_drift_policies("stable"), suite="stable").policy_for,
        )
    assert drift.labels == {"suite": "shifted", "net": "alex", "weights_version": "w1"}
    assert drift.value < DRIFT.ks_threshold and drift.threshold == DRIFT.ks_threshold
    assert drift.annotations["samples"] == "100 baseline, 50 recent"
    assert drift.annotations["summary"].startswith("KS p=")
    [(key, result)] = stable_check.items()  # the stable suite was checked, not skipped for want of samples
    assert (key, result.checked, result.drifted, result.n_baseline, result.n_recent) == (
        ("alex", "w1"),
        True,
        False,
        100,
        50,
    )


def test_drift_against_a_pinned_run(session_factory, db_url) -> None:
    rng = np.random.default_rng(3)
    with session_factory.begin() as session:
        pinned = finished_run(session, [float(d) for d in rng.normal(0.2, 0.02, 40)])
        moved = finished_run(session, [float(d) for d in rng.normal(0.3, 0.02, 40)])
    pin = DriftPolicy(baseline="pinned", pinned_run=pinned, window=40, min_samples=30)
    judge(session_factory, moved, policies(max_distance=1.0, drift=pin), settings_for(db_url))
    [drift] = [row for row in alert_rows(session_factory) if row[0] == "drift"]
    assert (drift[1], drift[5]["samples"]) == ("open", "40 baseline, 40 recent")


def test_a_missing_pinned_run_is_named(session_factory, db_url) -> None:
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.01])
    pin = DriftPolicy(baseline="pinned", pinned_run=99, min_samples=30)
    with pytest.raises(EvaluationError) as caught:
        judge(session_factory, run_id, policies(drift=pin), settings_for(db_url))
    assert str(caught.value) == "policy drift.pinned_run: run 99: no such run"
    with session_factory() as session:
        assert session.get(Run, run_id).verdict is None  # rolled back: judged again once fixed


# --- runs that cannot be judged ----------------------------------------------------------------


def test_a_run_without_any_threshold_is_not_judged(session_factory, db_url) -> None:
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.01], suite="unconfigured")
    with pytest.raises(EvaluationError) as caught:
        judge(session_factory, run_id, policies(), settings_for(db_url))
    assert str(caught.value) == (
        f"run {run_id}: no max_distance for net 'alex' weights 'w1': set it in the policy file or pass --threshold"
    )


def test_an_unfinished_run_is_not_judged(session_factory, db_url) -> None:
    with session_factory.begin() as session:
        run_id = finished_run(session, [0.01, 0.02], queued=[1])
    with pytest.raises(EvaluationError) as caught:
        judge(session_factory, run_id, policies(), settings_for(db_url))
    assert str(caught.value) == f"run {run_id}: pairs: 1 comparison(s) not finished (p1.png -> c1.png is queued)"


# --- the daemon --------------------------------------------------------------------------------


def test_a_tick_judges_finished_runs_once_and_skips_the_rest(session_factory, engine, db_url) -> None:
    with session_factory.begin() as session:
        failing = finished_run(session, [0.3])
        waiting = finished_run(session, [0.3, 0.01], queued=[1])
        unconfigured = finished_run(session, [0.01], suite="unconfigured")
        passing = finished_run(session, [0.01])
    daemon = Daemon(engine, policies(), settings_for(db_url))
    assert daemon.tick() == {"evaluated": 2, "sent": 0}
    assert daemon.unjudgeable == {unconfigured}
    assert daemon.tick() == {"evaluated": 0, "sent": 0}
    with session_factory() as session:
        verdicts = {run_id: session.get(Run, run_id).verdict for run_id in (failing, waiting, unconfigured, passing)}
    assert verdicts == {failing: "fail", waiting: None, unconfigured: None, passing: "pass"}
    # the failing run opened the alert, the later passing one resolved it
    assert [(rule, state, run) for rule, state, *_, run in alert_rows(session_factory)] == [
        ("distance", "resolved", failing)
    ]


def _policy_file(tmp_path, text: str):
    path = tmp_path / "gate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_gate_once_judges_and_logs_one_line_per_alert(session_factory, db_url, tmp_path) -> None:
    with session_factory.begin() as session:
        failing = finished_run(session, [0.3])
    policy = _policy_file(tmp_path, f"[suite.{SUITE}]\nmax_distance = 0.1\n")
    result = CliRunner().invoke(
        main,
        ["gate", "--policies", str(policy), "--once"],
        env={"LPIPS_GATE_DATABASE_URL": db_url, "LPIPS_GATE_BROKER_URL": None, "LPIPS_GATE_WEBHOOK_URL": None},
    )
    assert (result.exit_code, result.stdout) == (0, "")
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("gate started", "info"),
        ("alert opened", "warning"),
        ("run judged", "info"),
        ("gate stopped", "info"),
    ]
    opened = lines[1]
    assert {key: opened[key] for key in ("rule", "suite", "labels", "value", "threshold", "run")} == {
        "rule": "distance",
        "suite": SUITE,
        "labels": DISTANCE_LABELS,
        "value": 0.3,
        "threshold": 0.1,
        "run": failing,
    }
    assert lines[2]["verdict"] == "fail"


def test_logging_after_a_cli_run_writes_to_the_stderr_of_the_moment(session_factory, db_url, capsys) -> None:
    """The runner's stderr, where `gate` configured logging, is closed once it returns; later lines
    go to whatever stderr is then (here pytest's), instead of failing on the closed stream."""
    result = CliRunner().invoke(
        main, ["gate", "--once"], env={"LPIPS_GATE_DATABASE_URL": db_url, "LPIPS_GATE_LOG_JSON": "true"}
    )
    assert [json.loads(line)["event"] for line in result.stderr.splitlines()] == ["gate started", "gate stopped"]
    get_logger("gate.test").warning("after the run", run=7)
    [line] = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert (line["event"], line["level"], line["run"]) == ("after the run", "warning", 7)


def test_gate_refuses_a_bad_policy_file(tmp_path, sqlite_url) -> None:
    policy = _policy_file(tmp_path, "[suite.render]\nmax_distance = -1\n")
    result = CliRunner().invoke(
        main, ["gate", "--policies", str(policy), "--once"], env={"LPIPS_GATE_DATABASE_URL": sqlite_url}
    )
    assert (result.exit_code, result.stderr) == (
        2,
        f"Error: --policies: {policy}: suite.render.max_distance: Input should be greater than or equal to 0\n",
    )


def test_the_daemon_stops_cleanly_on_sigterm(session_factory, db_url, tmp_path) -> None:
    env = {**os.environ, "LPIPS_GATE_DATABASE_URL": db_url, "LPIPS_GATE_LOG_JSON": "true"}
    env.pop("LPIPS_GATE_WEBHOOK_URL", None)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "gate.cli", "gate", "--interval", "60"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(daemon.stderr.readline())["event"] == "gate started"
        signalled = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert time.monotonic() - signalled < 5  # did not sleep out its 60 s interval
        assert json.loads(daemon.stderr.readline())["event"] == "gate stopped"
    finally:
        daemon.kill()
        daemon.wait()


def test_a_database_outage_is_logged_and_the_tick_retried(capsys) -> None:
    missing = make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/lpips_gate_test_never_created")
    try:
        configure(settings_for("sqlite://", log_json=True))
        assert Daemon(missing, policies(), settings_for("sqlite://")).tick() == {"evaluated": 0, "sent": 0}
    finally:
        missing.dispose()
    [line] = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert (line["event"], line["level"]) == ("database unavailable, retried next tick", "error")
    assert line["error"]  # the driver's words: present, not pinned
