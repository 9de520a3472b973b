"""The service end to end (submit -> rows stored) with one worker, against the bare reference
`lpips` model on the same pairs in the same run. Prints a table and JSON.

    python bench/service.py [--pairs 64] [--size 256] [--net alex] [--repeat 3] [--quick] [--json out.json]

Uses the local PostgreSQL (a scratch database, dropped afterwards) and Redis (database 14, flushed),
and also measures the embedded mode (no broker, SQLite, in-process). BENCH_WORKER_LOG=FILE keeps the
worker's log."""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

from gate.runs.service import poll_until_finished, submit_run  # noqa: E402
from gate.settings import Settings  # noqa: E402
from gate.store import repository as repo  # noqa: E402
from gate.store import session_scope  # noqa: E402
from gate.store.migrate import upgrade  # noqa: E402
from gate.store.opening import open_store  # noqa: E402

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BROKER = "redis://127.0.0.1:6379/14"


POLL_S = 0.05  # `wait` looks every 0.5 s; the bench must see when the last row lands (more often costs CPU)


def folders(root: Path, n: int, size: int, *, seed: int) -> list[tuple[Path, Path]]:
    """REF and CAND folders of n generated pairs under root; distinct seeds give distinct images."""
    (root / "pool").mkdir(parents=True)
    pairs = bench.make_pairs(root / "pool", n, size, seed=seed)
    for i, (ref, cand) in enumerate(pairs):
        for side, path in (("ref", ref), ("cand", cand)):
            (root / side).mkdir(exist_ok=True)
            (root / side / f"{i:04d}.png").write_bytes(path.read_bytes())
    return pairs


def timed_run(settings: Settings, root: Path, label: str) -> tuple[float, list[float]]:
    start = time.perf_counter()
    with open_store(settings) as engine:
        run_id, ids = submit_run(settings, engine, root / "ref", root / "cand", suite=label, threshold=None,
                                 net=None, version=None, precision=None, maps=False)
        poll_until_finished(engine, run_id, timeout=600, interval=POLL_S)
        elapsed = time.perf_counter() - start
        with session_scope(engine) as session:
            rows = repo.list_comparisons(session, run_id=run_id)
    assert all(r.status == "done" for r in rows), [r.error for r in rows if r.status != "done"][:3]
    return len(ids) / elapsed, [r.distance for r in sorted(rows, key=lambda r: r.ref)]


def with_worker(settings: Settings, env: dict, log: Path):
    worker = subprocess.Popen(["lpips-gate", "worker"], env=env, stdout=open(log, "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while "worker process ready" not in log.read_text():  # the pool process has loaded its models
        if time.monotonic() > deadline or worker.poll() is not None:
            raise RuntimeError(f"the worker did not get ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return worker


def measure(*, net: str = "alex", size: int = 256, n: int = 64, repeat: int = 3) -> dict:
    """One row: the service (submit -> rows stored, one worker) and the embedded mode against the bare
    reference, `repeat` interleaved rounds after a warm-up round."""
    database = f"lpips_gate_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{database}"'))
    redis.Redis.from_url(BROKER).flushdb()
    worker = None
    service_rates, reference_rates, diffs = [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            # Round 0 warms the worker up, as bench.rates warms the reference; every round has its own
            # images, so no round finds the references of another in the worker's feature cache.
            rounds = [root / f"round{k}" for k in range(repeat + 1)]
            pairs = [folders(folder, n, size, seed=k) for k, folder in enumerate(rounds)]
            service = Settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
                               broker_url=BROKER, image_root=root, net=net, heartbeat_file=root / "heartbeat")
            upgrade(service.database_url)
            env = dict(os.environ, LPIPS_GATE_DATABASE_URL=service.database_url, LPIPS_GATE_BROKER_URL=BROKER,
                       LPIPS_GATE_IMAGE_ROOT=str(root), LPIPS_GATE_NET=net,
                       LPIPS_GATE_HEARTBEAT_FILE=str(root / "heartbeat"))
            worker = with_worker(service, env, root / "worker.log")
            reference = bench.reference_model(net, service)
            try:
                timed_run(service, rounds[0], "bench-warm-up")
                for k in range(1, repeat + 1):  # interleaved, so a busy moment of the machine hits both
                    rate, distances = timed_run(service, rounds[k], f"bench-round-{k}")
                    ref_run, ref_d = bench.bare_reference(reference, pairs[k], 8)
                    service_rates.append(rate)
                    reference_rates.append(bench.rates([ref_run], n, 1)[0])
                    diffs.append(float(np.max(np.abs(np.array(distances) - ref_d))))
            finally:
                if os.environ.get("BENCH_WORKER_LOG"):
                    Path(os.environ["BENCH_WORKER_LOG"]).write_text((root / "worker.log").read_text())
            embedded = Settings(database_url=f"sqlite:///{root / 'embedded.db'}", broker_url=None, image_root=root,
                                net=net)
            upgrade(embedded.database_url)  # only the default embedded store is created on first use
            # One run, as `lpips-gate submit` without a broker would do it: models load in the process
            embedded_rate, embedded_d = timed_run(embedded, rounds[-1], "bench-embedded")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        redis.Redis.from_url(BROKER).flushdb()
    ref_rate, service_rate = statistics.median(reference_rates), statistics.median(service_rates)
    return {"net": net, "size": size, "pairs": n, "rounds": repeat, "reference_pairs_s": ref_rate,
            "service_pairs_s": service_rate, "embedded_pairs_s": embedded_rate,
            "service_ratio": service_rate / ref_rate, "embedded_ratio": embedded_rate / ref_rate,
            "service_ratio_per_round": [s / r for s, r in zip(service_rates, reference_rates)],
            "max_abs_diff_service_vs_reference": max(diffs),
            "max_abs_diff_embedded_vs_reference": float(np.max(np.abs(np.array(embedded_d) - ref_d)))}


def print_row(row: dict) -> None:
    rounds_text = " ".join(f"{x:.2f}" for x in row["service_ratio_per_round"])
    print(f"{row['net']:5} {row['size']:5}px  reference {row['reference_pairs_s']:7.1f}/s  service (submit -> rows, "
          f"1 worker, x{row['pairs']}, median of {row['rounds']}) {row['service_pairs_s']:.1f}/s "
          f"({row['service_ratio']:.2f}x; rounds {rounds_text})  "
          f"embedded {row['embedded_pairs_s']:.1f}/s ({row['embedded_ratio']:.2f}x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--net", default="alex")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (medians are reported)")
    parser.add_argument("--quick", action="store_true", help="8 pairs at 64 px, one round: checks that it works")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n, size, repeat = (8, 64, 1) if args.quick else (args.pairs, args.size, args.repeat)
    row = measure(net=args.net, size=size, n=n, repeat=repeat)
    print_row(row)
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
