"""Health of a worker host, for probes and `lpips-gate health`:

- live:  the heartbeat file is fresh (a worker process's keeper touched it within `orphan_after`);
- ready: the database and the broker answer;
- model: the weights of the configured backbones are present and match their sha256, and a golden
  pair gives its known distance within 1e-4 (real weights only: random ones are never healthy).

`live` alone imports neither torch nor a database driver, so it is cheap enough for a liveness probe."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHECKS = ("live", "ready", "model")
TOLERANCE = 1e-4
# The LPIPS authors' example pair, shipped in the package with its v0.1 fp32 distances (expected.json).
FIXTURES = Path(__file__).resolve().parent / "golden"
FIXTURE_PAIR = ("ex_ref.png", "ex_p0.png")
# Where the fixtures are not installed: `generated_pair`, measured once with the same weights.
GENERATED_DISTANCES = {"alex": 0.445126, "vgg": 0.439893}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def live(settings, *, now: float | None = None) -> Check:
    path = Path(settings.heartbeat_file)
    if not path.exists():
        return Check("live", False, f"no heartbeat file at {path}: no worker process has started")
    age = (time.time() if now is None else now) - path.stat().st_mtime
    if age > settings.orphan_after:
        return Check("live", False, f"heartbeat {age:.1f}s ago (limit {settings.orphan_after}s)")
    return Check("live", True, f"heartbeat {age:.1f}s ago")


def ready(settings) -> Check:
    problems, fine = [], []
    for name, probe in (("database", _database), ("broker", _broker)):
        try:
            fine.append(f"{name} {probe(settings)}")
        except Exception as exc:  # noqa: BLE001  (any failure to answer is "not ready", with its reason)
            problems.append(f"{name} unreachable: {type(exc).__name__}: {exc}".strip())
    return Check("ready", not problems, "; ".join(problems or fine))


def _database(settings) -> str:
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    url = make_url(settings.database_url)
    connect_args = {"connect_timeout": 5} if url.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    return f"ok ({url.render_as_string(hide_password=True)})"


def _broker(settings) -> str:
    if not settings.broker_url:
        return "not configured (embedded mode)"
    from kombu import Connection

    with Connection(settings.broker_url, connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=5)
        return f"ok ({connection.as_uri()})"


def model(settings, *, fixtures: Path = FIXTURES) -> Check:
    nets = list(dict.fromkeys(n for n in (settings.net, settings.fallback_net) if n))
    results = [_net_health(settings, net, fixtures) for net in nets]
    return Check("model", all(ok for ok, _ in results), "; ".join(detail for _, detail in results))


def _net_health(settings, net: str, fixtures: Path) -> tuple[bool, str]:
    from worker import weights

    row = next(r for r in weights.status(Path(settings.weights_dir)) if r["net"] == net)
    if not row["present"]:
        return False, f"{net}: no weights in {settings.weights_dir}"
    if not row["verified"]:
        return False, f"{net}: {row['path']} does not match its sha256 {row['sha256'][:12]}"
    if net not in GENERATED_DISTANCES:  # the nets of expected.json, too
        return True, f"{net}: weights verified ({row['sha256'][:12]}); no golden pair for {net}"
    try:
        distance, expected, source = golden_distance(settings, net, fixtures)
    except Exception as exc:  # noqa: BLE001  (a model that cannot run is unhealthy, whatever the reason)
        return False, f"{net}: golden pair failed: {type(exc).__name__}: {exc}"
    ok = abs(distance - expected) <= TOLERANCE
    verdict = "ok" if ok else f"off by {abs(distance - expected):.2e} > {TOLERANCE:g}"
    return ok, f"{net}: golden {source} {distance:.6f} vs {expected:.6f} {verdict}"


def golden_distance(settings, net: str, fixtures: Path = FIXTURES) -> tuple[float, float, str]:
    """(measured, expected, which pair) on the shipped fixture pair, or the generated one without it;
    the engine is built as the worker's are (`worker.runtime.build_engine`)."""
    from worker.runtime import build_engine

    engine = build_engine(settings, net=net, version="0.1", precision="fp32")
    if all((fixtures / name).is_file() for name in (*FIXTURE_PAIR, "expected.json")):
        pair = tuple(fixtures / name for name in FIXTURE_PAIR)
        return _distance(engine, pair), fixture_distance(fixtures, net), "ex_ref/ex_p0"
    with tempfile.TemporaryDirectory() as folder:
        return _distance(engine, generated_pair(Path(folder))), GENERATED_DISTANCES[net], "generated"


def fixture_distance(fixtures: Path, net: str) -> float:
    """The reference distance of FIXTURE_PAIR for `net`, from the expected.json beside the images."""
    pairs = json.loads((fixtures / "expected.json").read_text(encoding="utf-8"))["pairs"]
    return next(p[net] for p in pairs if (p["ref"], p["cand"]) == FIXTURE_PAIR)


def _distance(engine, pair) -> float:
    outcome = next(iter(engine.compare_files([pair])))
    if outcome.error is not None:
        raise RuntimeError(outcome.error)
    return outcome.distance


def generated_pair(folder: Path) -> tuple[Path, Path]:
    """A 64x64 gradient and the same with its centre inverted: integer arithmetic, lossless PNG,
    so the pixels are the same on every machine."""
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    ref = np.stack([(x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256], axis=-1).astype(np.uint8)
    cand = ref.copy()
    cand[16:48, 16:48] = 255 - cand[16:48, 16:48]
    paths = (folder / "golden_ref.png", folder / "golden_cand.png")
    for pixels, path in zip((ref, cand), paths):
        Image.fromarray(pixels).save(path)
    return paths


def report(settings, checks: tuple[str, ...] = CHECKS) -> dict:
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {CHECKS}")
    probes = {"live": live, "ready": ready, "model": model}
    results = [probes[name](settings) for name in checks]
    return {
        "healthy": all(c.ok for c in results),
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in results},
    }
