"""A clone anywhere runs its tests and its health check: nothing in the project reads the environment's
`../shared` folder (the LPIPS example images ship in worker/golden/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("gate", "worker", "tests", "bench", "scripts", "migrations", "deploy")
TOP_LEVEL = ("pyproject.toml", "setup.py", "alembic.ini", "docker-compose.yml", "policies.example.toml")
TEXT = {".py", ".sh", ".toml", ".ini", ".cfg", ".yml", ".yaml", ".json", ".txt", ".Dockerfile"}
# "shared/fixtures", "../shared", or a path joined from a "shared" component: `... / "shared"`
OUTSIDE = re.compile(r"""shared/fixtures|\.\./shared\b|/\s*["']shared["']""")


def _sources() -> list[Path]:
    files = [ROOT / name for name in TOP_LEVEL if (ROOT / name).is_file()]
    for folder in FOLDERS:
        files += [
            path for path in sorted((ROOT / folder).rglob("*"))
            if path.is_file() and path.suffix in TEXT and "__pycache__" not in path.parts
        ]
    return [path for path in files if path != Path(__file__).resolve()]


def test_the_pattern_finds_each_way_of_naming_the_shared_folder():
    assert [bool(OUTSIDE.search(line)) for line in (
        'ROOT.parents[2] / "shared" / "fixtures"',
        "Path('../shared/fixtures/lpips-examples')",
        "cp ../shared/x .",
        'settings.shared_secret / "shared_key"',
    )] == [True, True, True, False]


def test_no_source_reads_the_shared_folder():
    sources = _sources()
    assert ROOT / "worker" / "health.py" in sources and ROOT / "tests" / "cluster.py" in sources
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []
