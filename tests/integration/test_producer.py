"""`submit`, `wait` and `results` against the real PostgreSQL, SQLite and Redis (db 15, flushed around
each test that uses it): rows in the store, messages on the queue, exact outputs and exit codes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner, Result
from PIL import Image
from sqlalchemy import func, inspect, select

from gate.cli import main
from gate.judging.policy import PolicySet, policy_hash, suite_policy
from gate.runs.queue import store_queue_at
from gate.runs.service import submit_run
from gate.settings import Settings
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from gate.store.migrate import current_revision, head_revision
from gate.store.models import Run

BROKER_URL = "redis://127.0.0.1:6379/15"
# the defaults: no policy, or one without masks
SCORE_OPTIONS = {"region_px": 32, "area_level": 1.0, "masks": [], "missing": "fail"}
CLOSED_BROKER_URL = "redis://127.0.0.1:1/15"
IMAGES = ("a.png", "b/c.png", "d.jpg")


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An image root with ref/ and new/ holding the same three (empty) image files."""
    root = tmp_path / "images"
    _touch(root / "ref", *IMAGES, "notes.txt")
    _touch(root / "new", *IMAGES)
    return root


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _cli(args: list[str], *, db: str | None, root: Path, broker: str | None = None, **env: str) -> Result:
    """Run `lpips-gate ARGS` with settings from the environment only (None unsets a variable)."""
    settings = {"LPIPS_GATE_DATABASE_URL": db, "LPIPS_GATE_IMAGE_ROOT": str(root), "LPIPS_GATE_BROKER_URL": broker}
    return CliRunner().invoke(main, args, env={**settings, **env})


def _submit(db: str | None, root: Path, *extra: str, broker: str | None = BROKER_URL, **env: str) -> Result:
    return _cli(["submit", str(root / "ref"), str(root / "new"), "--suite", "smoke", *extra],
                db=db, root=root, broker=broker, **env)


def _queued(client: redis.Redis, database_url: str) -> list[dict]:
    """The messages on the queue of the store at `database_url`, oldest first (kombu pushes on the left)."""
    messages = []
    for raw in reversed(client.lrange(store_queue_at(database_url), 0, -1)):
        message = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append({"task": message["headers"]["task"], "args": args, "kwargs": kwargs})
    return messages


def _comparisons(url: str, run_id: int) -> list:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            return repo.list_comparisons(session, run_id=run_id)
    finally:
        engine.dispose()


def _run_count(url: str) -> int:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            return session.scalar(select(func.count()).select_from(Run))
    finally:
        engine.dispose()


# --- submit with a broker ----------------------------------------------------------------------


def test_submit_stores_the_run_and_queues_its_ids_in_batches(pg_url: str, images: Path,
                                                             broker: redis.Redis) -> None:
    result = _submit(pg_url, images, "--json", LPIPS_GATE_MAX_BATCH="1", LPIPS_GATE_MESSAGE_BATCHES="2")
    assert (result.exit_code, result.stdout, result.stderr) == (0, '{"run": 1, "submitted": 3}\n', "")
    rows = _comparisons(pg_url, 1)
    assert [(c.ref, c.cand, c.status, c.attempts) for c in rows] == [
        ("ref/a.png", "new/a.png", "queued", 0),
        ("ref/b/c.png", "new/b/c.png", "queued", 0),
        ("ref/d.jpg", "new/d.jpg", "queued", 0),
    ]
    ids = [c.id for c in rows]
    assert broker.llen(store_queue_at(pg_url)) == 2
    assert _queued(broker, pg_url) == [
        {"task": "lpips_gate.compare", "args": [], "kwargs": {"comparison_ids": ids[:2]}},
        {"task": "lpips_gate.compare", "args": [], "kwargs": {"comparison_ids": ids[2:]}},
    ]


def test_submit_stores_the_run_options_and_settings_defaults(pg_url: str, images: Path,
                                                             broker: redis.Redis) -> None:
    explicit = _submit(pg_url, images, "--threshold", "0.2", "--net", "vgg", "--version", "0.0",
                       "--precision", "bf16", "--maps")
    assert (explicit.exit_code, explicit.stdout) == (0, "run 1: 3 comparisons queued in 1 messages\n")
    defaults = _submit(pg_url, images, LPIPS_GATE_NET="squeeze", LPIPS_GATE_PRECISION="fp16")
    assert defaults.exit_code == 0
    engine = make_engine(pg_url)
    with session_scope(engine) as session:
        runs = [repo.get_run(session, run_id=run_id) for run_id in (1, 2)]
        stored = [(r.suite.name, r.threshold, r.net, r.version, r.precision, r.options, r.verdict) for r in runs]
    engine.dispose()
    assert stored == [
        ("smoke", 0.2, "vgg", "0.0", "bf16", {**SCORE_OPTIONS, "maps": True, "cand_dir": "new"}, None),
        ("smoke", None, "squeeze", "0.1", "fp16", {**SCORE_OPTIONS, "maps": False, "cand_dir": "new"}, None),
    ]
    with_threshold = suite_policy(PolicySet(), suite="smoke", threshold=0.2, net="vgg").model_dump(mode="json")
    assert [run.policy for run in runs] == [with_threshold, None]  # without one the daemon judges it
    assert broker.llen(store_queue_at(pg_url)) == 2


def test_submit_run_stores_and_queues_without_the_cli(pg_url: str, images: Path, broker: redis.Redis) -> None:
    settings = Settings(database_url=pg_url, image_root=images, broker_url=BROKER_URL, max_batch=2,
                        message_batches=1, net="vgg")
    engine = make_engine(pg_url)
    submitted = submit_run(settings, engine, images / "ref", images / "new", suite="api", threshold=0.3, net=None,
                           version="0.0", precision=None, maps=True)
    assert submitted == (1, [1, 2, 3])
    with session_scope(engine) as session:
        run = repo.get_run(session, run_id=1)
        stored = (run.suite.name, run.threshold, run.net, run.version, run.precision, run.options)
    engine.dispose()
    assert stored == ("api", 0.3, "vgg", "0.0", "fp32", {**SCORE_OPTIONS, "maps": True, "cand_dir": "new"})
    assert [m["kwargs"]["comparison_ids"] for m in _queued(broker, pg_url)] == [[1, 2], [3]]


def test_files_reached_twice_through_a_linked_folder_are_paired_once(pg_url: str, images: Path,
                                                                     broker: redis.Redis) -> None:
    for side in ("ref", "new"):
        os.symlink(images / side / "b", images / side / "latest")
    result = _submit(pg_url, images, "--json")
    assert (result.exit_code, result.stdout) == (0, '{"run": 1, "submitted": 3}\n')
    assert [c.ref for c in _comparisons(pg_url, 1)] == ["ref/a.png", "ref/b/c.png", "ref/d.jpg"]
    assert [m["kwargs"]["comparison_ids"] for m in _queued(broker, pg_url)] == [[1, 2, 3]]


def test_unmatched_files_are_stored_new_and_missing_and_never_queued(pg_url: str, images: Path,
                                                                    broker: redis.Redis) -> None:
    _touch(images / "new", "extra.png")
    (images / "ref/d.jpg").unlink()
    result = _submit(pg_url, images, "--json")
    assert (result.exit_code, json.loads(result.stdout)) == (0, {"run": 1, "submitted": 2})
    rows = [(c.ref, c.cand, c.status, c.distance) for c in _comparisons(pg_url, 1)]
    assert rows == [("ref/a.png", "new/a.png", "queued", None), ("ref/b/c.png", "new/b/c.png", "queued", None),
                    ("ref/d.jpg", "new/d.jpg", "new", None), ("ref/extra.png", "new/extra.png", "new", None)]
    assert broker.llen(store_queue_at(pg_url)) == 1  # one message: the two queued comparisons


def test_folders_outside_the_image_root_are_refused(pg_url: str, images: Path, tmp_path: Path,
                                                    broker: redis.Redis) -> None:
    _touch(tmp_path / "outside", *IMAGES)
    result = _cli(["submit", str(images / "ref"), str(tmp_path / "outside"), "--suite", "smoke"],
                  db=pg_url, root=images, broker=BROKER_URL)
    assert (result.exit_code, result.stderr) == (
        2, f"Error: {tmp_path / 'outside'}: outside the image root {images} (LPIPS_GATE_IMAGE_ROOT)\n",
    )
    assert (_run_count(pg_url), broker.llen(store_queue_at(pg_url))) == (0, 0)


@pytest.mark.parametrize("threshold", ["-0.5", "nan", "inf"])
def test_a_threshold_must_be_finite_and_not_negative(pg_url: str, images: Path, threshold: str) -> None:
    result = _submit(pg_url, images, f"--threshold={threshold}")
    assert (result.exit_code, result.stderr) == (
        2, f"Error: --threshold: must be a finite number >= 0, got {float(threshold)}\n",
    )


def test_an_empty_suite_name_is_refused(pg_url: str, images: Path) -> None:
    result = _cli(["submit", str(images / "ref"), str(images / "new"), "--suite", " "], db=pg_url, root=images)
    assert (result.exit_code, result.stderr) == (2, "Error: --suite: must not be empty\n")
    assert _run_count(pg_url) == 0


def test_an_unreachable_broker_is_reported_before_the_run_is_stored(pg_url: str, images: Path) -> None:
    result = _submit(pg_url, images, broker=CLOSED_BROKER_URL)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: broker unreachable (LPIPS_GATE_BROKER_URL): ")  # then redis-py's words
    assert _run_count(pg_url) == 0


def test_an_unreachable_database_is_named_without_its_password(images: Path, broker: redis.Redis) -> None:
    result = _submit("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/gate", images)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: database postgresql+psycopg://postgres:***@127.0.0.1:1/gate: ")
    assert "hunter2" not in result.stderr
    assert broker.keys("lpips.*") == []  # no store's queue holds anything


PRODUCERS = ["submit", "results", "wait", "alerts"]


def _producer_args(command: str, root: Path) -> list[str]:
    return {"submit": ["submit", str(root / "ref"), str(root / "new"), "--suite", "smoke"],
            "results": ["results", "--run", "1"], "wait": ["wait", "1"], "alerts": ["alerts"]}[command]


@pytest.mark.parametrize("command", PRODUCERS)
def test_an_unmigrated_postgresql_is_refused_and_left_untouched(pg_empty_url: str, images: Path, command: str,
                                                                broker: redis.Redis) -> None:
    result = _cli(_producer_args(command, images), db=pg_empty_url, root=images, broker=BROKER_URL)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", (
        f"Error: database {pg_empty_url}: schema at revision none, this version needs {head_revision()}; "
        "migrate it with `lpips-gate db upgrade`\n"
    ))
    engine = make_engine(pg_empty_url)
    try:
        assert inspect(engine).get_table_names() == []  # not even alembic_version
    finally:
        engine.dispose()
    assert broker.keys("lpips.*") == []


@pytest.mark.parametrize("command", PRODUCERS)
def test_a_sqlite_file_that_does_not_exist_is_not_created(sqlite_empty_url: str, images: Path,
                                                          command: str) -> None:
    """Only the embedded default (no LPIPS_GATE_DATABASE_URL) is created on first use."""
    result = _cli(_producer_args(command, images), db=sqlite_empty_url, root=images)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", (
        f"Error: database {sqlite_empty_url}: no such file; create it with `lpips-gate db upgrade`\n"
    ))
    assert not Path(sqlite_empty_url.removeprefix("sqlite:///")).exists()


def test_a_migrated_database_is_served_after_db_upgrade(pg_empty_url: str, images: Path,
                                                        broker: redis.Redis) -> None:
    assert _cli(["db", "upgrade"], db=pg_empty_url, root=images).exit_code == 0
    result = _submit(pg_empty_url, images, "--json")
    assert (result.exit_code, result.stdout) == (0, '{"run": 1, "submitted": 3}\n')
    assert len(_comparisons(pg_empty_url, 1)) == 3


def test_the_default_database_is_an_embedded_sqlite_file_created_on_first_use(
        images: Path, tmp_path: Path, broker: redis.Redis) -> None:
    data_home = tmp_path / "data"
    result = _submit(None, images, "--json", XDG_DATA_HOME=str(data_home))
    assert (result.exit_code, result.stdout) == (0, '{"run": 1, "submitted": 3}\n')
    url = f"sqlite:///{data_home / 'lpips-gate' / 'lpips-gate.db'}"
    assert (current_revision(url), len(_comparisons(url, 1))) == (head_revision(), 3)


def test_the_producer_commands_never_import_the_engine(pg_url: str, images: Path, broker: redis.Redis) -> None:
    code = (
        "import sys\n"
        "from gate.cli import main\n"
        "main(sys.argv[1:], standalone_mode=False)\n"
        "main(['results', '--run', '1', '--json'], standalone_mode=False)\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'worker'}))\n"
    )
    env = {**os.environ, "LPIPS_GATE_DATABASE_URL": pg_url, "LPIPS_GATE_IMAGE_ROOT": str(images),
           "LPIPS_GATE_BROKER_URL": BROKER_URL}
    done = subprocess.run([sys.executable, "-c", code, "submit", "ref", "new", "--suite", "s", "--json"],
                          cwd=images, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[0] == '{"run": 1, "submitted": 3}'
    assert done.stdout.splitlines()[-1] == "[]"


# --- results and wait --------------------------------------------------------------------------


@pytest.fixture
def finished_run(pg_url: str, images: Path, broker: redis.Redis) -> list[int]:
    """Run 1: a.png done by worker w1 (first attempt), b/c.png failed for good, d.jpg still queued."""
    assert _submit(pg_url, images).exit_code == 0
    ids = [c.id for c in _comparisons(pg_url, 1)]
    engine = make_engine(pg_url)
    with session_scope(engine) as session:
        repo.claim_comparisons(session, ids=ids[:1], worker="w1", max_attempts=3)
        repo.record_result(session, comparison_id=ids[0], distance=0.125, net="alex",
                           weights_version="alex-v0.1", precision="fp32", layers=[LAYER], scores=SCORED,
                           regions={"region": [0, 8, 33, 33]})
        repo.record_error(session, comparison_id=ids[1], reason="decode: truncated PNG", final=True)
    engine.dispose()
    return ids


STATS = {"sparsity": 0.5, "mean": 0.25, "std": 1.5, "min": 0.0, "max": 8.0, "nonfinite": 0, "spatial_std": 1.25,
         "dead": 0.0625}
LAYER = {"index": 0, "name": "features.1", "distance": 0.125, "ref_stats": STATS, "cand_stats": {**STATS, "dead": 0.5}}
SCORED = {"mean": 0.125, "region": 0.5, "area": 0.0, "fireflies": 0.0, "flat": 0.0, "nonfinite": 0.0, "outliers": 0.0}


def _finish(url: str, comparison_id: int, distance: float) -> None:
    engine = make_engine(url)
    with session_scope(engine) as session:
        repo.record_result(session, comparison_id=comparison_id, distance=distance, net="vgg",
                           weights_version="vgg-v0.1", precision="fp32", layers=[])
    engine.dispose()


def test_results_json_lists_every_comparison_with_its_producer(pg_url: str, images: Path,
                                                               finished_run: list[int]) -> None:
    result = _cli(["results", "--run", "1", "--json"], db=pg_url, root=images)
    assert (result.exit_code, result.stderr) == (0, "")
    unscored = {"scores": None, "regions": None, "layers": []}
    shown = json.loads(result.stdout)
    assert (shown["run"], shown["suite"], shown["meta"]) == (1, "smoke", {})
    assert shown["comparisons"] == [
        {"ref": "ref/a.png", "cand": "new/a.png", "status": "done", "distance": 0.125, "net": "alex",
         "weights_version": "alex-v0.1", "attempts": 1, "error": None, "scores": SCORED,
         "regions": {"region": [0, 8, 33, 33]}, "layers": [LAYER]},
        {"ref": "ref/b/c.png", "cand": "new/b/c.png", "status": "error", "distance": None, "net": None,
         "weights_version": None, "attempts": 0, "error": "decode: truncated PNG", **unscored},
        {"ref": "ref/d.jpg", "cand": "new/d.jpg", "status": "queued", "distance": None, "net": None,
         "weights_version": None, "attempts": 0, "error": None, **unscored},
    ]


def test_results_as_text(pg_url: str, images: Path, finished_run: list[int]) -> None:
    result = _cli(["results", "--run", "1"], db=pg_url, root=images)
    assert (result.exit_code, result.stdout) == (0, (
        "done      0.1250  ref/a.png -> new/a.png\n"
        "error          -  ref/b/c.png -> new/b/c.png  (decode: truncated PNG)\n"
        "queued         -  ref/d.jpg -> new/d.jpg\n"
    ))


def test_wait_prints_the_run_once_every_comparison_is_finished(pg_url: str, images: Path,
                                                               finished_run: list[int]) -> None:
    _finish(pg_url, finished_run[2], 0.5)
    result = _cli(["wait", "1", "--json"], db=pg_url, root=images)
    assert result.exit_code == 2  # not judged: no policy
    assert json.loads(result.stdout) == {
        "run": 1, "suite": "smoke", "verdict": None, "policy": None, "net": "alex", "weights_version": "alex-v0.1",
        "meta": {}, "reasons": [], "warnings": [], "pairs": [
            {"ref": "ref/a.png", "cand": "new/a.png", "name": "a.png", "status": "done", "verdict": None,
             "distance": 0.125, "error": None, "scores": SCORED, "reasons": [], "where": None, "seconds": None,
             "warning": None},
            {"ref": "ref/b/c.png", "cand": "new/b/c.png", "name": "b/c.png", "status": "error", "verdict": None,
             "distance": None, "error": "decode: truncated PNG", "scores": None, "reasons": [], "where": None,
             "seconds": None, "warning": None},
            {"ref": "ref/d.jpg", "cand": "new/d.jpg", "name": "d.jpg", "status": "done", "verdict": None,
             "distance": 0.5, "error": None, "scores": None, "reasons": [], "where": None, "seconds": None,
             "warning": None},
        ],
    }


def _verdict(url: str, run_id: int) -> str | None:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            return repo.get_run(session, run_id=run_id).verdict
    finally:
        engine.dispose()


def test_wait_judges_a_run_by_its_threshold_as_soon_as_it_is_finished(pg_url: str, images: Path,
                                                                       broker: redis.Redis) -> None:
    assert _submit(pg_url, images, "--threshold", "0.3", "--net", "vgg").exit_code == 0  # the net _finish scores by
    for comparison, distance in zip(_comparisons(pg_url, 1), (0.125, 0.5, 0.25), strict=True):
        _finish(pg_url, comparison.id, distance)
    result = _cli(["wait", "1", "--json"], db=pg_url, root=images)
    assert result.exit_code == 1, result.stderr  # the run fails
    summary = json.loads(result.stdout)
    assert (summary["verdict"], [pair["status"] for pair in summary["pairs"]]) == ("fail", ["done"] * 3)
    assert [pair["verdict"] for pair in summary["pairs"]] == ["pass", "fail", "pass"]
    assert summary["policy"] == policy_hash(suite_policy(PolicySet(), suite="smoke", threshold=0.3))
    assert _verdict(pg_url, 1) == "fail"
    [opened] = [json.loads(line) for line in result.stderr.splitlines()]  # logs on stderr, as JSON
    assert (opened["event"], opened["rule"], opened["value"], opened["threshold"]) == (
        "alert opened", "distance", 0.5, 0.3,
    )
    text = _cli(["wait", "1"], db=pg_url, root=images)  # judged once: the second wait reads the verdict
    assert (text.stdout.splitlines()[0], text.stderr) == ("run 1 (suite smoke): verdict fail", "")
    assert text.stdout.splitlines()[2] == "fail      0.5000  ref/b/c.png -> new/b/c.png"  # judged: its verdict


def test_wait_leaves_a_run_without_a_threshold_pending(pg_url: str, images: Path, finished_run: list[int]) -> None:
    _finish(pg_url, finished_run[2], 0.5)
    result = _cli(["wait", "1", "--json"], db=pg_url, root=images)
    assert (result.exit_code, json.loads(result.stdout)["verdict"]) == (2, None)  # no verdict is no pass
    assert result.stderr == ("run 1: not judged: it records no policy (give --threshold or --policies, or let the "
                             "gate daemon judge it)\n")
    assert _verdict(pg_url, 1) is None  # the gate daemon judges it by its policies


def test_wait_polls_until_a_worker_finishes_the_last_comparison(pg_url: str, images: Path,
                                                                 finished_run: list[int]) -> None:
    worker = threading.Timer(0.8, _finish, args=(pg_url, finished_run[2], 0.25))
    started = time.monotonic()
    worker.start()
    try:
        result = _cli(["wait", "1", "--timeout", "20"], db=pg_url, root=images)
    finally:
        worker.join()
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.stderr  # finished, but no policy judges it here
    assert result.stdout.splitlines()[0] == "run 1 (suite smoke): verdict pending"
    assert result.stdout.splitlines()[3] == "done      0.2500  ref/d.jpg -> new/d.jpg"
    assert 0.8 <= elapsed < 10


def test_wait_times_out_with_the_progress_so_far(pg_url: str, images: Path, finished_run: list[int]) -> None:
    started = time.monotonic()
    result = _cli(["wait", "1", "--timeout", "0.6", "--json"], db=pg_url, root=images)
    elapsed = time.monotonic() - started
    assert (result.exit_code, json.loads(result.stdout), result.stderr) == (
        2, {"error": "run 1: timed out after 0.6 s (done 2 of 3)", "exit": 2, "run": 1},
        "Error: run 1: timed out after 0.6 s (done 2 of 3)\n",
    )
    assert 0.6 <= elapsed < 5


@pytest.mark.parametrize("args", [["wait", "7"], ["results", "--run", "7", "--json"]])
def test_an_unknown_run_is_not_found(pg_url: str, images: Path, finished_run: list[int], args: list[str]) -> None:
    result = _cli(args, db=pg_url, root=images)
    shown = json.dumps({"error": "run 7: not found", "exit": 2}) + "\n" if "--json" in args else ""
    assert (result.exit_code, result.stdout, result.stderr) == (2, shown, "Error: run 7: not found\n")


# --- the embedded mode (no broker): needs the `embedded` executor from the worker ---------------


def _write_png(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_without_a_broker_submit_computes_in_process_and_logs_on_stderr(sqlite_url: str, tmp_path: Path) -> None:
    """A fresh process, as a user runs it: the log lines of the in-process computation follow Settings
    (JSON, INFO) on stderr, and stdout holds only the answer."""
    root = tmp_path / "images"
    for side in ("ref", "new"):
        _write_png(root / side / "same.png", seed=1)
    _write_png(root / "ref/sub/changed.png", seed=2)
    _write_png(root / "new/sub/changed.png", seed=3)
    env = {**os.environ, "LPIPS_GATE_DATABASE_URL": sqlite_url, "LPIPS_GATE_IMAGE_ROOT": str(root),
           "LPIPS_GATE_DEVICE": "cpu", "LPIPS_GATE_LOG_JSON": "true"}
    for name in ("LPIPS_GATE_BROKER_URL", "LPIPS_GATE_LOG_LEVEL"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "gate.cli", "submit", "ref", "new", "--suite", "s", "--json"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (0, '{"run": 1, "submitted": 2}\n'), done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["event"], line["level"], line["comparison_id"]) for line in lines] == [
        ("comparison done", "info", 1), ("comparison done", "info", 2),
    ]
    same, changed = _comparisons(sqlite_url, 1)
    assert (same.ref, same.status, same.net, same.attempts) == ("ref/same.png", "done", "alex", 1)
    assert (changed.ref, changed.status, changed.net) == ("ref/sub/changed.png", "done", "alex")
    assert same.distance == pytest.approx(0.0, abs=1e-6)
    assert changed.distance > 0.05


def test_without_the_engine_the_embedded_mode_says_what_to_install(sqlite_url: str, images: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "from gate.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "LPIPS_GATE_DATABASE_URL": sqlite_url, "LPIPS_GATE_IMAGE_ROOT": str(images)}
    env.pop("LPIPS_GATE_BROKER_URL", None)
    done = subprocess.run([sys.executable, "-c", code, "submit", "ref", "new", "--suite", "s"],
                          cwd=images, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", "Error: the embedded mode needs the engine: pip install 'lpips-gate[worker]'\n",
    )
    assert _cli(["results", "--run", "1"], db=sqlite_url, root=images).stderr == "Error: run 1: not found\n"


def test_hdr_runs_record_their_tone_map(pg_url: str, tmp_path: Path, broker: redis.Redis) -> None:
    for side in ("ref", "cand"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "shot.exr").write_bytes(b"v/1\x01")  # pairing reads names only; workers decode
    settings = Settings(database_url=pg_url, image_root=tmp_path, broker_url=BROKER_URL)
    engine = make_engine(pg_url)
    run_id, _ = submit_run(settings, engine, tmp_path / "ref", tmp_path / "cand", suite="hdr", threshold=None,
                           net=None, version=None, precision=None, maps=False)
    with session_scope(engine) as session:
        options = repo.get_run(session, run_id=run_id).options
    engine.dispose()
    assert options == {**SCORE_OPTIONS, "maps": False, "cand_dir": "cand", "tonemap": "exr:srgb-clamp-v1:exposure=+0"}
