"""The layering the project promises, checked on its own source: `gate` (and its unit tests) runs
without torch or any `worker` module, neither package has an import cycle at module level, and no
module is longer than a reader can hold."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gate", "worker")
HEAVY = ("torch", "torchvision")
MAX_LINES = 450

TORCH_BLOCKER = f'''"""Loaded with `-p` before any conftest or test module: importing torch or torchvision fails,
and every attempt, even one a library catches, is reported at the end of the run."""

import sys

BLOCKED = {HEAVY!r}
attempts = []


class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{{name}} is blocked: gate's unit tests must not need it")
        return None


assert not [name for name in sys.modules if name.partition(".")[0] in BLOCKED], "loaded before the blocker"
sys.meta_path.insert(0, Blocked())


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"blocked imports: {{sorted(set(attempts))}}")
'''


def _pytest(*args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (pythonpath, env.get("PYTHONPATH"))))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def _outcomes(summary: str) -> dict[str, int]:
    """pytest's last line, "127 passed, 1 skipped in 8.53s", as {"passed": 127, "skipped": 1}."""
    return {word: int(count) for count, word in re.findall(r"(\d+) (\w+)", summary.rsplit(" in ", 1)[0])}


def test_gate_unit_tests_pass_with_torch_impossible_to_import(tmp_path: Path) -> None:
    collected = _pytest("--collect-only", "tests/unit/gate")
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    expected = _outcomes(collected.stdout.strip().splitlines()[-1])["tests"]

    (tmp_path / "torch_blocker.py").write_text(TORCH_BLOCKER)
    blocked = _pytest("-p", "torch_blocker", "tests/unit/gate", pythonpath=str(tmp_path))

    lines = blocked.stdout.strip().splitlines()
    assert blocked.returncode == 0, blocked.stdout[-3000:] + blocked.stderr[-3000:]
    assert "blocked imports: []" in lines
    assert expected > 100  # the whole folder, not a stray file
    assert {k: v for k, v in _outcomes(lines[-1]).items() if k not in ("warning", "warnings")} == {"passed": expected}


def _modules(package: str) -> dict[str, Path]:
    """Every module of the package by its dotted name, read from the file system (not from imports)."""
    modules = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_importing_every_gate_module_loads_no_torch_and_no_worker() -> None:
    """In a fresh interpreter, so nothing this test session imported counts."""
    script = """
import importlib, json, pkgutil, sys
import gate
names = sorted(["gate"] + [m.name for m in pkgutil.walk_packages(gate.__path__, "gate.")])
for name in names:
    if not name.endswith(".__main__"):  # running it is the CLI, importing it is the same code
        importlib.import_module(name)
heavy = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "torchvision", "worker"))
print(json.dumps({"walked": names, "heavy": heavy}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert found["walked"] == sorted(_modules("gate"))  # every file was imported
    assert found["heavy"] == []


def _module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not those in functions, not `if TYPE_CHECKING:`."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The project's modules an import statement executes, most specific first: `from a import b`
    is module a.b when there is one, else a's __init__."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    targets = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            targets.add(f"{base}.{alias.name}")
        elif base in known:
            targets.add(base)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = {name: path for package in PACKAGES for name, path in _modules(package).items()}
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = {t for node in _module_level_imports(tree) for t in _imported(name, is_package, node, known)}
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_import_graph_sees_the_imports_it_must() -> None:
    """The cycle check below is only as good as the graph: known edges of both packages are in it."""
    graph = import_graph()
    assert {"gate.errors", "gate.settings"} <= graph["gate.cli.runs"]  # absolute `from a.b import c`
    assert "gate.judging.policy" not in graph["gate.cli.runs"]  # under `if TYPE_CHECKING:` only
    assert "worker.images" in graph["worker.hdr"]
    assert "worker.hdr" not in graph["worker.images"]  # imported inside load_image, not at the top
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_at_module_level_in_gate_and_worker() -> None:
    assert cycles(import_graph()) == []


def test_no_module_in_gate_or_worker_is_over_450_lines() -> None:
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
               for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    assert len(lengths) > 50
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}
