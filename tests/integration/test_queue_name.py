"""A fixed queue name (LPIPS_GATE_QUEUE_NAME, for KEDA) on real PostgreSQL and Redis (db 15): producers
send to it, and the store key still keeps two stores off one queue."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from gate.cli import main
from gate.runs.queue import QUEUE_BINDING_PREFIX, QueueTaken, store_queue_at
from gate.settings import Settings
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from tests.integration.test_producer import BROKER_URL, _comparisons, _submit, broker, images  # noqa: F401  (fixtures)

QUEUE = "lpips-gpu"


def _key(url: str) -> str:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            return repo.store_key(session)
    finally:
        engine.dispose()


def test_a_configured_queue_name_receives_the_runs(pg_url: str, images: Path, broker: redis.Redis) -> None:  # noqa: F811
    result = _submit(pg_url, images, "--json", LPIPS_GATE_QUEUE_NAME=QUEUE)
    assert (result.exit_code, result.stdout) == (0, '{"run": 1, "submitted": 3}\n')
    assert broker.llen(QUEUE) == 1
    assert broker.llen(store_queue_at(pg_url)) == 0  # not the store's default queue
    assert broker.get(QUEUE_BINDING_PREFIX + QUEUE) == _key(pg_url).encode()


def test_a_second_store_is_refused_the_queue_of_the_first(pg_url: str, sqlite_url: str, images: Path,  # noqa: F811
                                                          broker: redis.Redis) -> None:  # noqa: F811  (fixture)
    settings = Settings(broker_url=BROKER_URL, queue_name=QUEUE)
    assert store_queue_at(pg_url, settings) == QUEUE
    assert store_queue_at(pg_url, settings) == QUEUE  # the same store again: fine
    with pytest.raises(QueueTaken) as refused:
        store_queue_at(sqlite_url, settings)
    first, second = _key(pg_url), _key(sqlite_url)
    assert str(refused.value) == (
        f"queue 'lpips-gpu' (LPIPS_GATE_QUEUE_NAME) serves another store (key {first[:12]}), not this database "
        f"(key {second[:12]}): give each store its own queue name, or delete the Redis key "
        "'lpips_gate:queue-store:lpips-gpu' once that store is gone"
    )

    result = _submit(sqlite_url, images, LPIPS_GATE_QUEUE_NAME=QUEUE)  # a producer of the second store
    assert result.exit_code == 2
    assert result.stderr == f"Error: run 1: comparisons marked as errors: {refused.value}\n"
    assert {c.status for c in _comparisons(sqlite_url, 1)} == {"error"}
    assert broker.llen(QUEUE) == 0


def test_a_worker_of_another_store_refuses_to_start_on_the_queue(pg_url: str, sqlite_url: str,
                                                                 broker: redis.Redis) -> None:  # noqa: F811  (fixture)
    store_queue_at(pg_url, Settings(broker_url=BROKER_URL, queue_name=QUEUE))
    result = CliRunner().invoke(main, ["worker", "--device", "cpu"], env={
        "LPIPS_GATE_DATABASE_URL": sqlite_url, "LPIPS_GATE_BROKER_URL": BROKER_URL, "LPIPS_GATE_QUEUE_NAME": QUEUE,
    })
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: queue 'lpips-gpu' (LPIPS_GATE_QUEUE_NAME) serves another store")
