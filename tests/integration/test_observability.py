"""The shipped observability against the real tools: promtool checks and unit-tests
deploy/prometheus/rules.yml, and a real Alertmanager (Debian's prometheus-alertmanager, on loopback)
receives an alert from the gate's alert lifecycle on real PostgreSQL, then its resolution."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from gate.judging.daemon import Daemon
from gate.store import make_engine
from tests.integration.test_gate import DISTANCE_LABELS, finished_run, judge, policies, settings_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
WAIT_S = 60.0  # a deadline against hanging, not a speed target
ALERTMANAGER_CONFIG = """\
route:
  receiver: nobody
receivers:
  - name: nobody
"""


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: scripts/test.sh installs it"
    return path


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([_tool("promtool"), "check", "rules", "rules.yml"], cwd=PROMETHEUS,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip().splitlines()[-1].strip()) == (0, "SUCCESS: 5 rules found")


def test_promtool_unit_tests_the_rules() -> None:
    done = subprocess.run([_tool("promtool"), "test", "rules", "rules.test.yml"], cwd=PROMETHEUS,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on a free loopback port, no cluster, its storage in tmp_path; its base URL."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(ALERTMANAGER_CONFIG, encoding="utf-8")
    port = _free_port()
    process = subprocess.Popen(
        [_tool("prometheus-alertmanager"), f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while not _ready(base):
            assert process.poll() is None, f"alertmanager exited: {process.stderr.read() if process.stderr else ''}"
            assert time.monotonic() < deadline, "alertmanager did not become ready"
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(30)


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _alerts(base: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=10) as response:
        return list(json.load(response))


def test_alertmanager_receives_the_gates_alert_and_its_resolution(pg_url: str, alertmanager: str) -> None:
    settings = settings_for(pg_url, webhook_url=f"{alertmanager}/api/v2/alerts", public_url="https://gate.example",
                            runbook_url="https://docs.example/runbook.md")
    engine = make_engine(pg_url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    try:
        with factory() as session, session.begin():
            failing, passing = finished_run(session, [0.3]), finished_run(session, [0.05])
        judge(factory, failing, policies(), settings)

        [alert] = _alerts(alertmanager)
        assert alert["labels"] == {"alertname": "LpipsGateDistance", **DISTANCE_LABELS, "severity": "critical"}
        assert alert["annotations"] == {
            "summary": "distance: 0.3 against threshold 0.1",
            "runbook_url": "https://docs.example/runbook.md#distance",
            "worst_pair": "p0.png -> c0.png",
            "failed": "1 of 1",
            "value": "0.3",
            "threshold": "0.1",
            "run": str(failing),
        }
        assert alert["generatorURL"] == f"https://gate.example/runs/{failing}"
        assert alert["status"]["state"] == "active"

        judge(factory, passing, policies(), settings)  # the condition cleared: resolved, endsAt in the past
        assert _alerts(alertmanager) == []
        assert Daemon(engine, policies(), settings).tick() == {"evaluated": 0, "sent": 0}  # nothing owed any more
    finally:
        engine.dispose()
