"""`lpips-gate health`: liveness from the heartbeat file, readiness from the real database and broker,
the model from verified weights and a golden pair with a known distance."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gate.cli import main
from gate.settings import Settings
from tests.integration.services import copy_weights, free_port
from tests.support.faults import Faults, injected
from worker import health
from worker.health import Check

SHARED_REDIS = "redis://127.0.0.1:6379/15"  # only pinged


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    return copy_weights(tmp_path_factory.mktemp("health"))


def _beat(path: Path, seconds_ago: float) -> float:
    path.touch()
    now = time.time()
    os.utime(path, (now - seconds_ago, now - seconds_ago))
    return now


def test_live_needs_a_heartbeat_file_touched_within_orphan_after(tmp_path):
    settings = Settings(heartbeat_file=tmp_path / "heartbeat", orphan_after=30)
    assert health.live(settings) == Check(
        "live", False, f"no heartbeat file at {tmp_path / 'heartbeat'}: no worker process has started"
    )
    now = _beat(settings.heartbeat_file, 10)
    assert health.live(settings, now=now) == Check("live", True, "heartbeat 10.0s ago")
    now = _beat(settings.heartbeat_file, 45)
    assert health.live(settings, now=now) == Check("live", False, "heartbeat 45.0s ago (limit 30s)")


def test_ready_when_database_and_broker_answer(pg_url, sqlite_url):
    assert health.ready(Settings(database_url=pg_url, broker_url=SHARED_REDIS)) == Check(
        "ready", True, f"database ok ({pg_url}); broker ok (redis://:**@127.0.0.1:6379/15)"
    )
    assert health.ready(Settings(database_url=sqlite_url, broker_url=None)) == Check(
        "ready", True, f"database ok ({sqlite_url}); broker not configured (embedded mode)"
    )


def test_not_ready_names_what_does_not_answer(pg_url):
    port = free_port()
    check = health.ready(
        Settings(
            database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere",
            broker_url=f"redis://127.0.0.1:{port}/0",
        )
    )
    database, broker = check.detail.split("; ")
    assert not check.ok
    assert database.startswith("database unreachable: OperationalError: ")  # then the driver's words
    assert broker.startswith("broker unreachable: OperationalError: ")


def test_model_verifies_weights_and_golden_distances(weights_dir):
    settings = Settings(weights_dir=weights_dir, net="alex", fallback_net="vgg", device="cpu")
    assert health.model(settings) == Check(
        "model",
        True,
        "alex: golden ex_ref/ex_p0 0.721881 vs 0.721881 ok; vgg: golden ex_ref/ex_p0 0.568613 vs 0.568613 ok",
    )


def test_without_the_fixtures_a_generated_pair_is_the_golden_one(weights_dir, tmp_path):
    settings = Settings(weights_dir=weights_dir, net="alex", fallback_net=None, device="cpu")
    assert health.model(settings, fixtures=tmp_path / "absent") == Check(
        "model", True, "alex: golden generated 0.445126 vs 0.445126 ok"
    )
    first, second = health.generated_pair(tmp_path), tmp_path / "again"
    second.mkdir()
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in health.generated_pair(second)]


def test_tampered_missing_or_random_weights_are_unhealthy(weights_dir, tmp_path):
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("manifest.json", "alex.safetensors"):
        (tampered / name).write_bytes((weights_dir / name).read_bytes())
    blob = bytearray((tampered / "alex.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tampered / "alex.safetensors").write_bytes(bytes(blob))
    sha = json.loads((tampered / "manifest.json").read_text())["alex"]["sha256"]
    assert health.model(Settings(weights_dir=tampered, fallback_net=None)) == Check(
        "model", False, f"alex: {tampered / 'alex.safetensors'} does not match its sha256 {sha[:12]}"
    )
    assert health.model(Settings(weights_dir=tmp_path / "empty", net="vgg", fallback_net=None)) == Check(
        "model", False, f"vgg: no weights in {tmp_path / 'empty'}"
    )
    with injected(Faults(random_weights=True)):  # verified files, but the engine runs untrained backbones
        random = health.model(Settings(weights_dir=weights_dir))
    assert not random.ok
    off = (r"alex: golden ex_ref/ex_p0 \S+ vs 0\.721881 off by \S+ > 0\.0001; "  # and the default fallback:
           r"vgg: golden ex_ref/ex_p0 \S+ vs 0\.568613 off by \S+ > 0\.0001")
    assert re.fullmatch(off, random.detail), random.detail


def test_health_command_exits_0_when_healthy_and_2_otherwise(pg_url, tmp_path):
    beat = tmp_path / "heartbeat"
    env = {
        "LPIPS_GATE_DATABASE_URL": pg_url,
        "LPIPS_GATE_BROKER_URL": SHARED_REDIS,
        "LPIPS_GATE_HEARTBEAT_FILE": str(beat),
        "LPIPS_GATE_ORPHAN_AFTER": "30",
    }
    args = ["health", "--json", "--check", "live", "--check", "ready"]
    _beat(beat, 1)
    healthy = CliRunner().invoke(main, args, env=env)
    assert healthy.exit_code == 0, healthy.output
    assert json.loads(healthy.stdout)["healthy"] is True
    _beat(beat, 31)
    stale = CliRunner().invoke(main, ["health", *args[2:]], env=env)  # text output
    assert stale.exit_code == 2
    lines = stale.stdout.splitlines()
    assert lines[0].startswith("live   FAIL  heartbeat 31.") and lines[0].endswith("s ago (limit 30s)")
    assert lines[1].startswith("ready  ok    database ok (")
