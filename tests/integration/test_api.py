"""The HTTP API over loopback (uvicorn on a free port, real PostgreSQL, the real engine in the
server's own process): tokens, paths confined to the image root, the body limit, 404s, probes and
metrics, and a run submitted over HTTP judged exactly as `check` judges the same folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import func, select

import gate.cli.serve
from gate.cli import main
from gate.runs.pairing import Pairing
from gate.runs.service import RunSpec, store_run
from gate.settings import Settings
from gate.store import make_engine, session_scope
from gate.store.models import Comparison, Run
from tests.support.imports import service_imports
from tests.support.live_server import live_server

SIZE = 64
WRITE, READ = "write-token-for-tests", "read-token-for-tests"
AUTH = {"Authorization": f"Bearer {WRITE}"}
DEADLINE_S = 120
BROKER_URL = "redis://127.0.0.1:6379/11"  # queues are named after each test database's own key


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def render_set(root: Path) -> Path:
    """ref/ two textures; new/: a.png nudged by +-8 levels (close), b.png black (far)."""
    for name, seed in (("a.png", 1), ("b.png", 2)):
        reference = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        _save(root / "ref" / name, reference)
        noise = np.random.default_rng(seed + 10).integers(-8, 9, reference.shape)
        near = np.clip(reference.astype(int) + noise, 0, 255).astype(np.uint8)
        _save(root / "new" / name, near if name == "a.png" else np.zeros_like(reference))
    return root


def api_settings(db_url: str, root: Path, **extra: Any) -> Settings:
    return Settings(**{"database_url": db_url, "image_root": root, "broker_url": None, "webhook_url": None,
                       "device": "cpu", **extra})


def wait_judged(client: httpx.Client, run_id: int) -> dict[str, Any]:
    """GET the run until it has a verdict (the server judges it once its pairs are done)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = client.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        run = response.json()
        if run["verdict"] is not None:
            return run
        assert time.monotonic() < deadline, f"run {run_id} not judged in {DEADLINE_S} s: {run}"
        time.sleep(0.2)


def _runs(db_url: str) -> tuple[int, int]:
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            return (session.scalar(select(func.count()).select_from(Run)) or 0,
                    session.scalar(select(func.count()).select_from(Comparison)) or 0)
    finally:
        engine.dispose()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return render_set(tmp_path / "images")


def test_writes_need_the_write_token_and_reads_the_read_token_when_one_is_set(pg_url: str, images: Path) -> None:
    body = {"suite": "smoke", "ref": "ref", "cand": "new", "threshold": 0.1}
    settings = api_settings(pg_url, images, api_token=SecretStr(WRITE), api_read_token=SecretStr(READ))
    with live_server(settings) as url, httpx.Client(base_url=url) as client:
        missing = client.post("/api/v1/runs", json=body)
        assert (missing.status_code, missing.headers["www-authenticate"]) == (401, "Bearer")
        assert WRITE not in missing.text and READ not in missing.text
        for token in ("wrong", READ):  # the read token cannot write
            answer = client.post("/api/v1/runs", json=body, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 401
        assert client.get("/api/v1/runs").status_code == 401
        assert client.get("/").status_code == 401
        for token in (READ, WRITE):
            answer = client.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"})
            assert (answer.status_code, answer.json()) == (200, [])
        assert client.get("/healthz").status_code == 200  # probes are never behind a token
    assert _runs(pg_url) == (0, 0)

    with live_server(api_settings(pg_url, images)) as url, httpx.Client(base_url=url) as client:
        refused = client.post("/api/v1/runs", json=body, headers={"Authorization": f"Bearer {WRITE}"})
        assert refused.status_code == 403
        assert refused.json() == {"detail": "writes are disabled: the server has no LPIPS_GATE_API_TOKEN"}
        assert client.get("/api/v1/runs").status_code == 200  # no read token: reads are open
    assert _runs(pg_url) == (0, 0)


def test_paths_outside_the_image_root_are_refused_naming_them_and_create_nothing(
    pg_url: str, images: Path, tmp_path: Path
) -> None:
    render_set(tmp_path / "outside")
    (images / "escape").symlink_to(tmp_path / "outside" / "ref" / "a.png")
    refused = [
        ({"ref": "../outside/ref", "cand": "new"}, "../outside/ref: outside the image root"),
        ({"ref": str(tmp_path / "outside" / "ref"), "cand": "new"}, "outside/ref: outside the image root"),
        ({"pairs": [{"ref": "ref/a.png", "cand": "../outside/new/a.png"}]},
         "pairs[0].cand: ../outside/new/a.png: outside the image root"),
        ({"pairs": [{"ref": "escape", "cand": "new/a.png"}]}, "pairs[0].ref: escape: outside the image root"),
        ({"pairs": [{"ref": "ref/a.png", "cand": "new/none.png"}]}, "pairs[0].cand: new/none.png: no such file"),
        ({"ref": "nowhere", "cand": "new"}, "nowhere: not a directory"),
    ]
    with live_server(api_settings(pg_url, images, api_token=SecretStr(WRITE))) as url, \
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        for paths, message in refused:
            answer = client.post("/api/v1/runs", json={"suite": "smoke", **paths})
            assert answer.status_code == 400, answer.text
            assert message in answer.json()["detail"], (paths, answer.json())
        both = client.post("/api/v1/runs", json={"suite": "s", "ref": "ref", "cand": "new", "pairs": [
            {"ref": "ref/a.png", "cand": "new/a.png"}]})
        assert both.status_code == 422
        assert client.post("/api/v1/runs", json={"suite": "s", "ref": "ref\x00", "cand": "new"}).status_code == 422
    assert _runs(pg_url) == (0, 0)


def test_bodies_over_the_limit_are_413_and_unknown_ids_404(pg_url: str, images: Path) -> None:
    settings = api_settings(pg_url, images, api_token=SecretStr(WRITE), api_max_body_bytes=1024)
    with live_server(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        big = {"suite": "smoke", "ref": "ref", "cand": "new", "meta": {"note": "x" * 1000}}
        assert client.post("/api/v1/runs", json=big).status_code == 413

        def chunks():  # no Content-Length: counted while read
            yield json.dumps(big).encode()

        assert client.post("/api/v1/runs", content=chunks(), headers={"content-type": "application/json"}
                           ).status_code == 413
        assert client.get("/api/v1/runs/99").json() == {"detail": "run 99: no such run"}
        assert client.get("/api/v1/runs/99").status_code == 404
        assert client.get("/api/v1/suites/none/trend").status_code == 404
        assert client.get("/runs/99").status_code == 404
        assert client.get("/runs/1/pairs/1/ref.png").status_code == 404
        assert client.get("/readyz").json() == {"status": "ready"}
    assert _runs(pg_url) == (0, 0)
    gone = api_settings(pg_url.rsplit("/", 1)[0] + "/no_such_database", images)
    with live_server(gone) as url:
        assert httpx.get(f"{url}/readyz").status_code == 503
        assert httpx.get(f"{url}/healthz").status_code == 200


def _checked(db_url: str, images: Path) -> dict[str, Any]:
    """`check ref new --suite smoke --threshold 0.1 --json`, computed in-process: what HTTP must match."""
    env = {"LPIPS_GATE_DATABASE_URL": db_url, "LPIPS_GATE_IMAGE_ROOT": str(images), "LPIPS_GATE_BROKER_URL": None,
           "LPIPS_GATE_WEBHOOK_URL": None, "LPIPS_GATE_DEVICE": "cpu"}
    checked = CliRunner().invoke(main, ["check", str(images / "ref"), str(images / "new"), "--suite", "smoke",
                                        "--threshold", "0.1", "--json"], env=env)
    assert checked.exit_code == 1, checked.output
    summary: dict[str, Any] = json.loads(checked.stdout)
    return summary


def _same_judgement(run: dict[str, Any], expected: dict[str, Any]) -> None:
    assert (run["suite"], run["verdict"], run["policy"]) == ("smoke", "fail", expected["policy"])
    shown = ("ref", "cand", "status", "verdict", "reasons", "where")
    assert [{key: pair[key] for key in shown} for pair in run["pairs"]] == [
        {key: pair[key] for key in shown} for pair in expected["pairs"]]
    assert [pair["distance"] for pair in run["pairs"]] == pytest.approx([p["distance"] for p in expected["pairs"]],
                                                                       abs=1e-6)
    assert [pair["scores"]["mean"] for pair in run["pairs"]] == pytest.approx(
        [p["scores"]["mean"] for p in expected["pairs"]], abs=1e-6)


def test_a_run_submitted_over_http_gets_the_distances_and_verdict_check_gives(pg_url: str, images: Path) -> None:
    expected = _checked(pg_url, images)

    settings = api_settings(pg_url, images, api_token=SecretStr(WRITE))
    with live_server(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        created = client.post("/api/v1/runs", json={"suite": "smoke", "ref": "ref", "cand": "new", "threshold": 0.1,
                                                    "meta": {"commit": "abc123"}})
        assert (created.status_code, created.json()) == (201, {"run": 2})
        run = wait_judged(client, 2)
        listed = client.get("/api/v1/runs").json()
        metrics = client.get("/metrics").text
        pairs = client.post("/api/v1/runs", json={"suite": "smoke", "threshold": 0.1, "pairs": [
            {"ref": "ref/b.png", "cand": "new/b.png"}], "meta": {"note": "<script>alert(1)</script>"}})
        explicit = wait_judged(client, pairs.json()["run"])
        page = client.get("/").text
        assert "<script>alert" not in page and "note=&lt;script&gt;alert(1)&lt;/script&gt;" in page
        trend = client.get("/api/v1/suites/smoke/trend").json()
        alerts = client.get("/api/v1/alerts", params={"suite": "smoke", "state": "open"}).json()
        assert client.get("/api/v1/alerts", params={"state": "resolved"}).json() == []
        _images_come_from_thumbnails_else_the_input_files(client, pg_url, images, run_id=2)

    _same_judgement(run, expected)
    assert run["meta"] == {"commit": "abc123"}
    assert [(item["run"], item["verdict"], item["pairs"], item["finished"]) for item in listed] == [
        (2, "fail", 2, 2), (1, "fail", 2, 2)]
    assert 'lpips_gate_api_runs_submitted_total 1.0' in metrics
    assert 'lpips_gate_api_requests_total{method="POST",route="/api/v1/runs",status="201"} 1.0' in metrics
    assert [(p["ref"], p["cand"], p["verdict"]) for p in explicit["pairs"]] == [("ref/b.png", "new/b.png", "fail")]
    near, far = (pair["distance"] for pair in expected["pairs"])
    assert [(row["run"], row["verdict"], row["pairs"], row["scored"]) for row in trend["runs"]] == [
        (1, "fail", 2, 2), (2, "fail", 2, 2), (3, "fail", 1, 1)]
    assert [value for row in trend["runs"] for value in (row["mean"], row["max"])] == pytest.approx(
        [(near + far) / 2, far, (near + far) / 2, far, far, far], abs=1e-6)
    assert trend["calibrations"] == []
    assert trend["drift"] == {"alerts": [], "baseline_runs": [], "window": 50, "baseline_size": 200}  # 5 distances
    distance = [alert for alert in alerts if alert["rule"] == "distance"]
    assert [(a["run"], a["state"], a["threshold"]) for a in distance] == [(3, "open", 0.1)]  # the last run to raise it
    assert distance[0]["value"] == pytest.approx(far, abs=1e-6)
    assert explicit["pairs"][0]["distance"] == pytest.approx(expected["pairs"][1]["distance"], abs=1e-6)


def test_with_a_broker_a_run_submitted_over_http_is_computed_by_a_worker(pg_url: str, images: Path) -> None:
    """The server only queues (its process never loads the engine); a real Celery worker computes."""
    expected = _checked(pg_url, images)
    env = {**os.environ, "LPIPS_GATE_DATABASE_URL": pg_url, "LPIPS_GATE_BROKER_URL": BROKER_URL,
           "LPIPS_GATE_IMAGE_ROOT": str(images), "LPIPS_GATE_DEVICE": "cpu"}
    worker = subprocess.Popen([sys.executable, "-m", "gate.cli", "worker", "--pool", "solo"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        settings = api_settings(pg_url, images, broker_url=BROKER_URL, api_token=SecretStr(WRITE))
        with live_server(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
            created = client.post("/api/v1/runs", json={"suite": "smoke", "ref": "ref", "cand": "new",
                                                        "threshold": 0.1})
            assert (created.status_code, created.json()) == (201, {"run": 2})
            run = wait_judged(client, 2)
    finally:
        worker.terminate()
        worker.wait(30)
    _same_judgement(run, expected)
    engine = make_engine(pg_url)
    try:
        with session_scope(engine) as session:
            workers = set(session.scalars(select(Comparison.worker).where(Comparison.run_id == 2)))
    finally:
        engine.dispose()
    assert len(workers) == 1 and not next(iter(workers)).startswith("embedded:")


def test_serve_refuses_a_store_that_is_not_there_and_calls_one_service(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = CliRunner().invoke(main, ["serve", "--port", "1"], env={"LPIPS_GATE_DATABASE_URL": f"sqlite:///{missing}"})
    assert result.exit_code == 2
    assert "no such file; create it with `lpips-gate db upgrade`" in result.stderr
    assert not missing.exists()
    assert service_imports(gate.cli.serve.__file__) == {
        ("__future__", "annotations"), ("gate.settings", "Settings"), ("gate.api.server", "run_server")}


def _images_come_from_thumbnails_else_the_input_files(client: httpx.Client, db_url: str, images: Path, *,
                                                      run_id: int) -> None:
    """The worker's thumbnail, typed by its bytes; the input file once a pair has none (a run without maps)."""
    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            stmt = select(Comparison).where(Comparison.run_id == run_id).order_by(Comparison.id)
            first = session.scalars(stmt).first()
            assert first is not None and first.ref_thumb is not None
            cid, heatmap, thumbnail = first.id, first.heatmap_png, first.ref_thumb
        shown = client.get(f"/runs/{run_id}/pairs/{cid}/ref.png")
        assert (shown.headers["content-type"], shown.content) == ("image/webp", thumbnail)
        shown = client.get(f"/runs/{run_id}/pairs/{cid}/heatmap.png")
        assert (shown.headers["content-type"], shown.content) == ("image/png", heatmap)
        with session_scope(engine) as session:
            session.get_one(Comparison, cid).ref_thumb = None
        original = client.get(f"/runs/{run_id}/pairs/{cid}/ref.png")
        assert (original.headers["content-type"], original.content) == (
            "image/png", (images / "ref/a.png").read_bytes())
        jpeg = b"\xff\xd8\xff\xe0" + b"thumbnail"
        with session_scope(engine) as session:
            session.get_one(Comparison, cid).ref_thumb = jpeg
        thumb = client.get(f"/runs/{run_id}/pairs/{cid}/ref.jpg")
        assert (thumb.headers["content-type"], thumb.content) == ("image/jpeg", jpeg)
        assert client.get(f"/runs/{run_id + 1}/pairs/{cid}/ref.png").status_code == 404  # not that run's pair
        assert client.get(f"/runs/{run_id}/pairs/{cid}/other.png").status_code == 422
    finally:
        engine.dispose()


def test_an_embedded_server_resumes_what_a_stopped_one_left_queued(pg_url: str, images: Path) -> None:
    expected = _checked(pg_url, images)
    settings = api_settings(pg_url, images)
    engine = make_engine(pg_url)
    try:  # stored as a POST stores it, never dispatched: as a server stopped before computing it leaves it
        pairing = Pairing(pairs=[("ref/a.png", "new/a.png"), ("ref/b.png", "new/b.png")])
        run_id, _ids = store_run(settings, engine, pairing, RunSpec("smoke", threshold=0.1), cand_dir="new")
    finally:
        engine.dispose()
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        run = wait_judged(client, run_id)
    _same_judgement(run, expected)


def test_an_unreachable_broker_is_503_and_stores_nothing(pg_url: str, images: Path) -> None:
    settings = api_settings(pg_url, images, broker_url="redis://127.0.0.1:1/0", api_token=SecretStr(WRITE))
    with live_server(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        answer = client.post("/api/v1/runs", json={"suite": "smoke", "ref": "ref", "cand": "new"})
    assert answer.status_code == 503
    assert answer.json()["detail"].startswith("broker unreachable (LPIPS_GATE_BROKER_URL): ")
    assert _runs(pg_url) == (0, 0)


def test_approve_over_http_promotes_candidates_and_refuses_a_file_changed_since_the_run(
    pg_url: str, images: Path
) -> None:
    before = {name: (images / "ref" / name).read_bytes() for name in ("a.png", "b.png")}
    settings = api_settings(pg_url, images, api_token=SecretStr(WRITE))
    with live_server(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        created = client.post("/api/v1/runs", json={"suite": "smoke", "ref": "ref", "cand": "new", "threshold": 0.1})
        wait_judged(client, created.json()["run"])
        assert httpx.post(f"{url}/api/v1/runs/1/approve", json={}).status_code == 401
        assert client.post("/api/v1/runs/99/approve", json={}).status_code == 404

        _save(images / "new" / "a.png", np.full((SIZE, SIZE, 3), 128, np.uint8))  # changed after the run measured it
        conflict = client.post("/api/v1/runs/1/approve", json={"by": "alice"})
        assert conflict.status_code == 409
        assert conflict.json()["detail"].startswith("run 1: 1 file(s) changed since the run measured them, "
                                                    "nothing approved: ")
        assert {name: (images / "ref" / name).read_bytes() for name in before} == before

        approved = client.post("/api/v1/runs/1/approve", json={"only": "b.png", "by": "alice"})
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert (body["run"], body["skipped"]) == (1, [])
    assert [(row["ref"], row["cand"]) for row in body["approved"]] == [("ref/b.png", "new/b.png")]
    assert (images / "ref" / "b.png").read_bytes() == (images / "new" / "b.png").read_bytes()
    assert (images / "ref" / "a.png").read_bytes() == before["a.png"]
