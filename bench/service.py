"""The service end to end (submit -> rows stored) with one worker, against the bare reference
`lpips` model on the same pairs in the same run. Prints a table and JSON.

    python bench/service.py [--pairs 64] [--size 256] [--net alex] [--quick] [--json out.json]

Uses the local PostgreSQL (a scratch database, dropped afterwards) and Redis (database 14, flushed),
and also measures the embedded mode (no broker, SQLite, in-process). BENCH_WORKER_LOG=FILE keeps the
worker's log."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).parent))
import compare as bench  # noqa: E402

from gate.commands.service import open_store, poll_until_finished, submit_run  # noqa: E402
from gate.settings import Settings  # noqa: E402
from gate.store import repository as repo  # noqa: E402
from gate.store import session_scope  # noqa: E402
from gate.store.migrate import upgrade  # noqa: E402

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BROKER = "redis://127.0.0.1:6379/14"


def folders(root: Path, n: int, size: int) -> list[tuple[Path, Path]]:
    (root / "pool").mkdir()
    pairs = bench.make_pairs(root / "pool", n, size)
    for i, (ref, cand) in enumerate(pairs):
        for side, path in (("ref", ref), ("cand", cand)):
            (root / side).mkdir(exist_ok=True)
            (root / side / f"{i:04d}.png").write_bytes(path.read_bytes())
    return pairs


def timed_run(settings: Settings, root: Path, label: str) -> tuple[float, list[float]]:
    start = time.perf_counter()
    run_id, ids = submit_run(settings, root / "ref", root / "cand", suite=label, threshold=None, net=None,
                             version=None, precision=None, maps=False)
    with open_store(settings) as engine:
        poll_until_finished(engine, run_id, timeout=600)
        elapsed = time.perf_counter() - start
        with session_scope(engine) as session:
            rows = repo.list_comparisons(session, run_id=run_id)
    assert all(r.status == "done" for r in rows), [r.error for r in rows if r.status != "done"][:3]
    return len(ids) / elapsed, [r.distance for r in sorted(rows, key=lambda r: r.ref)]


def with_worker(settings: Settings, env: dict, log: Path):
    worker = subprocess.Popen(["lpips-gate", "worker"], env=env, stdout=open(log, "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while " ready." not in log.read_text() and time.monotonic() < deadline:  # Celery logs "<name> ready." when consuming
        time.sleep(0.2)
    return worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--net", default="alex")
    parser.add_argument("--quick", action="store_true", help="8 pairs at 64 px: checks that it works")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n, size = (8, 64) if args.quick else (args.pairs, args.size)
    database = f"lpips_gate_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{database}"'))
    redis.Redis.from_url(BROKER).flushdb()
    worker = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            pairs = folders(root, n, size)
            service = Settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
                               broker_url=BROKER, image_root=root, net=args.net,
                               heartbeat_file=root / "heartbeat")
            upgrade(service.database_url)
            env = dict(os.environ, LPIPS_GATE_DATABASE_URL=service.database_url, LPIPS_GATE_BROKER_URL=BROKER,
                       LPIPS_GATE_IMAGE_ROOT=str(root), LPIPS_GATE_NET=args.net,
                       LPIPS_GATE_HEARTBEAT_FILE=str(root / "heartbeat"))
            worker = with_worker(service, env, root / "worker.log")
            try:
                service_rate, service_d = timed_run(service, root, "bench-service")
            finally:
                if os.environ.get("BENCH_WORKER_LOG"):
                    Path(os.environ["BENCH_WORKER_LOG"]).write_text((root / "worker.log").read_text())
            embedded = Settings(database_url=f"sqlite:///{root / 'embedded.db'}", broker_url=None, image_root=root,
                                net=args.net)
            embedded_rate, embedded_d = timed_run(embedded, root, "bench-embedded")
            reference = bench.reference_model(args.net, service)
            ref_run, ref_d = bench.bare_reference(reference, pairs, 8)
            ref_rate = bench.rate(ref_run, n, 1)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        redis.Redis.from_url(BROKER).flushdb()
    row = {"net": args.net, "size": size, "pairs": n, "reference_pairs_s": ref_rate,
           "service_pairs_s": service_rate, "embedded_pairs_s": embedded_rate,
           "service_ratio": service_rate / ref_rate, "embedded_ratio": embedded_rate / ref_rate,
           "max_abs_diff_service_vs_reference": float(np.max(np.abs(np.array(service_d) - ref_d))),
           "max_abs_diff_embedded_vs_reference": float(np.max(np.abs(np.array(embedded_d) - ref_d)))}
    print(f"{args.net} {size}px x{n}: reference {ref_rate:.1f}/s  service (submit -> rows, 1 worker) "
          f"{service_rate:.1f}/s ({row['service_ratio']:.2f}x)  embedded {embedded_rate:.1f}/s "
          f"({row['embedded_ratio']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
