"""The package as an operator installs it: a wheel built from the checkout, installed (with its
dependencies from the index) into a fresh virtual environment outside the checkout, migrates a fresh
PostgreSQL database from an unrelated folder, runs the gate daemon on it, and has no torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

from gate.store.migrate import head_revision

ROOT = Path(__file__).resolve().parents[2]
NOT_SHIPPED = (".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", ".mypy_cache", ".ruff_cache",
               ".pytest_cache", "tests", "bench")


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's bin folder, lpips-gate installed in it from a wheel of this checkout (a copy, so the
    build leaves nothing in the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", work / "dist", ".",
         cwd=source)
    (wheel,) = (work / "dist").glob("lpips_gate-*.whl")
    shutil.rmtree(source)
    _run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    bin_dir = work / "venv" / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "-q", wheel, cwd=work)
    return bin_dir


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (the checkout) and no LPIPS_GATE_* of the test run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("LPIPS_GATE_")}
    return {**env, **extra}


def test_the_wheel_reports_its_version_and_ships_its_licenses(installed: Path, tmp_path: Path) -> None:
    assert _run(installed / "lpips-gate", "--version", cwd=tmp_path, env=_clean_env()) == "lpips-gate, version 0.1.0\n"
    files = _run(installed / "python", "-c",
                 "import importlib.metadata as m; print(sorted(f.name for f in m.files('lpips-gate')))",
                 cwd=tmp_path, env=_clean_env())
    assert "'LICENSE'" in files and "'NOTICE'" in files


def test_the_wheel_migrates_a_fresh_database_from_any_folder(
    installed: Path, pg_empty_url: str, tmp_path: Path
) -> None:
    out = _run(installed / "lpips-gate", "db", "upgrade", cwd=tmp_path,
               env=_clean_env(LPIPS_GATE_DATABASE_URL=pg_empty_url))
    assert out.strip().endswith(f"at revision {head_revision()}")
    engine = create_engine(pg_empty_url, poolclass=NullPool)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "store_identity", "suites", "runs", "comparisons", "alerts"} <= tables
    where = _run(installed / "python", "-c", "import gate; print(gate.__file__)", cwd=tmp_path, env=_clean_env())
    assert Path(where.strip()).is_relative_to(installed.parent)
    # the light install runs the gate daemon, its HTTP endpoints included (prometheus-client is a base dependency)
    _run(installed / "lpips-gate", "gate", "--once", "--http-port", "0", cwd=tmp_path,
         env=_clean_env(LPIPS_GATE_DATABASE_URL=pg_empty_url))


def test_the_light_install_has_no_torch(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run([installed / "python", "-c", "import torch"], cwd=tmp_path, env=_clean_env(),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "ModuleNotFoundError: No module named 'torch'" in done.stderr
