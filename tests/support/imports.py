"""What a CLI module imports from outside `gate.cli`: a command parses, calls one service and prints."""

from __future__ import annotations

import ast
from pathlib import Path


def service_imports(module_file: str) -> set[tuple[str, str]]:
    """(module, name) of every `from X import name` in the file whose X is not gate.cli itself."""
    tree = ast.parse(Path(module_file).read_text(encoding="utf-8"))
    return {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("gate.cli")
        for alias in node.names
    }
