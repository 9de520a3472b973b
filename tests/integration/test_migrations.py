"""The migrations build the schema the models describe, on PostgreSQL and SQLite, both ways."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import Column, Integer, MetaData, inspect

from gate.cli import main
from gate.judging.verdict import run_summary
from gate.runs.queue import StoreNotReady, store_queue
from gate.store import repository as repo
from gate.store.db import make_engine, session_scope
from gate.store.migrate import current_revision, downgrade, head_revision, upgrade
from gate.store.models import Base

TABLES = {
    "alembic_version", "alerts", "approvals", "calibrations", "comparisons", "layer_metrics", "runs", "store_identity",
    "suites", "workers",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_empty_url" if request.param == "sqlite" else "pg_empty_url")


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _schema_diff(url: str, metadata: MetaData) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_from_empty(empty_url: str) -> None:
    assert current_revision(empty_url) is None
    upgrade(empty_url)
    assert (current_revision(empty_url), _tables(empty_url)) == (head_revision(), TABLES)
    upgrade(empty_url)  # already at head: nothing to do
    downgrade(empty_url, "base")
    assert (current_revision(empty_url), _tables(empty_url)) == (None, {"alembic_version"})
    upgrade(empty_url)
    assert (current_revision(empty_url), _tables(empty_url)) == (head_revision(), TABLES)


def test_each_migrated_store_has_its_own_key_and_so_its_own_queue(sqlite_empty_url: str, pg_empty_url: str) -> None:
    keys = []
    for url in (sqlite_empty_url, pg_empty_url):
        upgrade(url)
        engine = make_engine(url)
        with session_scope(engine) as session:
            keys.append(repo.store_key(session))
        assert store_queue(engine) == f"lpips.{keys[-1][:12]}"
        engine.dispose()
    assert [bool(re.fullmatch("[0-9a-f]{32}", key)) for key in keys] == [True, True]
    assert keys[0] != keys[1]


def test_a_store_without_identity_is_refused_with_the_remedy(sqlite_empty_url: str) -> None:
    upgrade(sqlite_empty_url, "0001")
    engine = make_engine(sqlite_empty_url)
    with pytest.raises(StoreNotReady) as refused:
        store_queue(engine)
    engine.dispose()
    assert str(refused.value) == (
        f"database {sqlite_empty_url}: no store identity (no such table: store_identity); "
        "is it up, and migrated (`lpips-gate db upgrade`)?"
    )


def test_models_match_migrations(db_url: str) -> None:
    assert _schema_diff(db_url, Base.metadata) == []


def test_schema_diff_sees_a_column_the_migrations_lack(db_url: str) -> None:
    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    metadata.tables["workers"].append_column(Column("cores", Integer))
    diff = _schema_diff(db_url, metadata)
    assert [(op, column.table.name, column.name) for op, _, _, column in diff] == [
        ("add_column", "workers", "cores")
    ]


def test_open_alert_index_is_partial_on_both_dialects(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("alerts")}
    finally:
        engine.dispose()
    index = indexes["uq_alerts_open_fingerprint"]
    where = index["dialect_options"].get(f"{engine.dialect.name}_where")
    assert (index["unique"], index["column_names"], re.sub(r"[()]|::text", "", str(where))) == (
        True,
        ["fingerprint"],
        "state = 'open'",
    )


def test_cli_upgrade_and_downgrade(sqlite_empty_url: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the migrations are found from the package, not the cwd
    env = {"LPIPS_GATE_DATABASE_URL": sqlite_empty_url}
    runner = CliRunner()
    result = runner.invoke(main, ["db", "upgrade"], env=env)
    assert (result.exit_code, result.output) == (0, f"{sqlite_empty_url}: at revision {head_revision()}\n")
    result = runner.invoke(main, ["db", "downgrade", "base"], env=env)
    assert (result.exit_code, result.output) == (0, f"{sqlite_empty_url}: at revision base\n")
    assert current_revision(sqlite_empty_url) is None


def test_cli_unknown_revision_exits_2_without_traceback(sqlite_empty_url: str) -> None:
    result = CliRunner().invoke(
        main, ["db", "upgrade", "nope"], env={"LPIPS_GATE_DATABASE_URL": sqlite_empty_url}
    )
    assert result.exit_code == 2
    assert result.output.startswith("Error: revision 'nope': ")  # then Alembic's words
    assert result.output.count("\n") == 1  # one line: no traceback


def test_cli_unreachable_database_exits_2(pg_empty_url: str) -> None:
    missing = pg_empty_url.rsplit("/", 1)[0] + "/lpips_gate_no_such_database"
    result = CliRunner().invoke(main, ["db", "upgrade"], env={"LPIPS_GATE_DATABASE_URL": missing})
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: database {missing}: ")  # then the server's words
    assert result.output.count("\n") == 1  # one line: no traceback


def test_installed_entry_point_upgrades_from_another_cwd(pg_empty_url: str, tmp_path) -> None:
    script = os.path.join(os.path.dirname(sys.executable), "lpips-gate")
    done = subprocess.run(
        [script, "db", "upgrade"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LPIPS_GATE_DATABASE_URL": pg_empty_url},
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"{pg_empty_url}: at revision {head_revision()}\n",
        "",
    )
    assert current_revision(pg_empty_url) == head_revision()


def test_a_run_judged_before_runs_recorded_their_policy_keeps_its_verdict(pg_empty_url: str) -> None:
    """0004 adds the policy columns empty: such a run shows its verdict, no policy and no pair verdicts,
    and no judge takes it up again."""
    upgrade(pg_empty_url, "0003")
    engine = make_engine(pg_empty_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO suites (id, name, created_at) VALUES (1, 'old', now())")
            connection.exec_driver_sql(
                "INSERT INTO runs (id, suite_id, created_at, threshold, net, version, precision, options, verdict,"
                " evaluated_at) VALUES (1, 1, now(), 0.1, 'alex', '0.1', 'fp32', '{}', 'fail', now())"
            )
            connection.exec_driver_sql(
                "INSERT INTO comparisons (id, run_id, ref, cand, status, distance, net, weights_version, attempts)"
                " VALUES (1, 1, 'a.png', 'b.png', 'done', 0.3, 'alex', 'w1', 1)"
            )
        upgrade(pg_empty_url)
        with session_scope(engine) as session:
            assert repo.runs_to_evaluate(session) == []
            summary = run_summary(session, 1)
    finally:
        engine.dispose()
    assert summary == {
        "run": 1, "suite": "old", "verdict": "fail", "policy": None, "net": "alex", "weights_version": "w1",
        "meta": {}, "reasons": [], "warnings": [],
        "pairs": [{"ref": "a.png", "cand": "b.png", "name": "b.png", "status": "done", "verdict": None, "distance": 0.3,
                   "error": None, "scores": None, "reasons": [], "where": None, "seconds": None, "warning": None}],
    }
