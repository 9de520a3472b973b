"""Real `lpips-gate worker` processes, private servers and the test's own view of the store, for the
worker tests (tests/integration/test_worker.py) and the reliability scenarios. Every wait polls with
a deadline and fails with the workers' logs; nothing sleeps on a guess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import func, select

from gate.runs.queue import TASK_COMPARE
from gate.settings import Settings
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from gate.store.models import Comparison, LayerMetric
from gate.store.models import Worker as WorkerRow
from tests.integration.services import private_folder, remove
from tests.support.faults import FAULTS_ENV, Faults

ROOT = Path(__file__).resolve().parents[1]  # the checkout: tests.support must be importable by a worker
DEADLINE_S = 150  # per wait: a worker start is most of it on a busy 2-core machine
ALEX_LAYERS = 5


def worker_env(settings: dict, faults: Faults | None = None) -> dict[str, str]:
    """This environment without any LPIPS_GATE_ variable or faults, plus `settings` as LPIPS_GATE_
    variables and `faults` for tests.support.faulty_worker (which then needs this checkout importable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPIPS_GATE_") and k != FAULTS_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"LPIPS_GATE_{k.upper()}": str(v) for k, v in settings.items() if v is not None})
    if faults is not None:
        env[FAULTS_ENV] = faults.to_env()
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def base_settings(database_url: str, broker_url: str, weights_dir: Path, root: Path, **extra) -> dict:
    """Short orphan detection, small batches and quick retries: the scenarios' worker settings."""
    return {
        "database_url": database_url,
        "broker_url": broker_url,
        "weights_dir": weights_dir,
        "image_root": root,
        "device": "cpu",
        "heartbeat_file": root.parent / "heartbeat",
        "orphan_after": 4,
        "max_batch": 4,
        "message_batches": 1,
        "retry_tries": 2,
        "retry_base_s": 0.05,
        "max_attempts": 3,
        "log_level": "INFO",
        **extra,
    }


def publish_raw(
    broker_url: str,
    queue_name: str,
    body: bytes,
    *,
    task_id: str | None,
    task_name: str = TASK_COMPARE,
    extra_headers: dict | None = None,
    **options,
) -> None:
    """A task message as Celery's protocol 2 frames it, with whatever body, id and name it is given
    (no id at all for None)."""
    headers = {"lang": "py", "task": task_name, "id": task_id, "root_id": task_id, "retries": 0}
    if task_id is None:
        del headers["id"], headers["root_id"]
    headers.update(extra_headers or {})
    options = {"content_type": "application/json", "content_encoding": "utf-8", **options}
    queue = Queue(queue_name, Exchange(queue_name), routing_key=queue_name)
    with Connection(broker_url) as connection:
        connection.Producer().publish(
            body,
            exchange=queue.exchange,
            routing_key=queue_name,
            declare=[queue],
            serializer=None,
            headers=headers,
            **options,
        )


class Worker:
    """`lpips-gate worker` in its own process group, stdout and stderr in one log file; with faults in
    its environment (`worker_env(..., faults)`), the same command through tests.support.faulty_worker."""

    def __init__(self, env: dict[str, str], log_path: Path, args: Iterable[str] = ("--concurrency", "1")):
        self.log_path = log_path
        command = [sys.executable, "-m", "tests.support.faulty_worker"] if FAULTS_ENV in env else ["lpips-gate"]
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(
                [*command, "worker", *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole group: the main process and its pool process die at once."""
        if self.alive:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM to the main process only, as a supervisor stops a service: Celery's warm shutdown."""
        self.popen.send_signal(signal.SIGTERM)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines() if line.startswith("{")]

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines() if line.get("event") == name]

    def pool_names(self) -> list[str]:
        """The store names of the pool processes this worker started, in order (one unless one died)."""
        return [event["worker"] for event in self.events("worker process ready")]

    def ready(self) -> bool:
        return bool(self.pool_names())

    def tail(self) -> str:
        return f"--- {self.log_path.name} ---\n" + self.text()[-4000:]


def wait_for(condition: Callable[[], bool], what: str, *workers: Worker, deadline_s: float = DEADLINE_S) -> float:
    """Seconds until `condition()` held; fails with the workers' logs after `deadline_s`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}\n{_tails(workers)}")
        broken = [w for w in workers if not w.alive or "Unrecoverable error" in w.text()]
        if broken:
            raise AssertionError(f"a worker died waiting for {what}\n{_tails(broken)}")
        time.sleep(0.05)
    return time.monotonic() - start


def _tails(workers: Iterable[Worker]) -> str:
    return "\n".join(w.tail() for w in workers)


def engine_distances(weights_dir: Path, root: Path, pairs) -> list[float]:
    """What the engine itself says of these pairs: what every worker must have stored."""
    from worker.engine import Engine  # here, not at the top: this plugin loads in every session, gate's too

    engine = Engine.from_settings(Settings(weights_dir=weights_dir, device="cpu", max_batch=16), net="alex")
    return [o.distance for o in engine.compare_files([(root / r, root / c) for r, c in pairs])]


def recorded(*workers: Worker) -> Counter:
    """Result writes per comparison id, over the logs of every worker given."""
    return Counter(e["comparison_id"] for w in workers for e in w.events("comparison done") if e["recorded"])


class StoreView:
    """The test's own connection to the database the workers write to."""

    def __init__(self, url: str):
        self.url, self.engine = url, make_engine(url)

    def create_run(self, pairs, *, suite: str = "reliability", net: str = "alex") -> tuple[int, list[int]]:
        with session_scope(self.engine) as session:
            run = repo.create_run(
                session, suite_name=suite, pairs=pairs, net=net, version="0.1", precision="fp32", options={}
            )
            return run.id, [c.id for c in repo.list_comparisons(session, run_id=run.id)]

    def progress(self, run_id: int) -> dict[str, int]:
        with session_scope(self.engine) as session:
            return repo.run_progress(session, run_id=run_id)

    def running(self, run_id: int) -> list[int]:
        return [c.id for c in self.rows(run_id) if c.status == "running"]

    def worker_names(self) -> set[str]:
        with session_scope(self.engine) as session:
            return set(session.scalars(select(WorkerRow.name)))

    def rows(self, *run_ids: int) -> list[Comparison]:
        with session_scope(self.engine) as session:
            return [c for run_id in run_ids for c in repo.list_comparisons(session, run_id=run_id)]

    def row(self, comparison_id: int) -> Comparison:
        with session_scope(self.engine) as session:
            return session.get_one(Comparison, comparison_id)

    def finished(self, *run_ids: int) -> bool:
        return all(r.status in ("done", "error") for r in self.rows(*run_ids))

    def done(self, *run_ids: int) -> int:
        return sum(r.status == "done" for r in self.rows(*run_ids))

    def layer_rows(self, *run_ids: int) -> int:
        with session_scope(self.engine) as session:
            ids = select(Comparison.id).where(Comparison.run_id.in_(run_ids))
            return session.scalar(
                select(func.count()).select_from(LayerMetric).where(LayerMetric.comparison_id.in_(ids))
            )

    def dispose(self) -> None:
        self.engine.dispose()


@pytest.fixture
def servers():
    """`start(PrivateRedis)` / `start(PrivatePostgres)`: started on demand, stopped and removed after."""
    folder = private_folder()
    started: list = []

    def start(kind, *args):
        server = kind(folder, *args).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()
    remove(folder)


@pytest.fixture
def workers(tmp_path):
    """`start(env, name, *args)` runs `lpips-gate worker`; every one still running is killed after."""
    running: list[Worker] = []

    def start(env: dict[str, str], name: str, *args: str) -> Worker:
        worker = Worker(env, tmp_path / f"{name}.log", args or ("--concurrency", "1"))
        running.append(worker)
        return worker

    yield start
    for worker in running:
        worker.kill()
