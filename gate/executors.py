"""In-process executors, found through the entry-point group `lpips_gate.executors`, so that `gate`
runs the engine without importing it (the engine is an optional install: lpips-gate[worker]).

An executor is `run(settings, comparison_ids: list[int]) -> None`: it computes the queued
comparisons with those ids and records the results in the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

from gate.cli import ENGINE_MODULES

EXECUTOR_GROUP = "lpips_gate.executors"
EMBEDDED = "embedded"
ENGINE_HINT = "pip install 'lpips-gate[worker]'"

Executor = Callable[[Any, list[int]], None]


class ExecutorUnavailable(RuntimeError):
    """The executor is not registered, or the engine it needs is not installed."""


def load_executor(name: str) -> Executor:
    matches = entry_points(group=EXECUTOR_GROUP, name=name)
    if not matches:
        raise ExecutorUnavailable(
            f"no executor {name!r} in the entry-point group {EXECUTOR_GROUP}: reinstall lpips-gate"
        )
    with _engine_required(name):
        return next(iter(matches)).load()


def run_executor(name: str, settings: Any, comparison_ids: Sequence[int]) -> None:
    """Run the comparisons in this process; an engine missing at load or call time is reported as such."""
    executor = load_executor(name)
    with _engine_required(name):
        executor(settings, list(comparison_ids))


@contextmanager
def _engine_required(name: str) -> Iterator[None]:
    """An ImportError of an engine module (torch, ...) means the optional install is missing."""
    try:
        yield
    except ImportError as exc:
        if exc.name not in ENGINE_MODULES:
            raise
        raise ExecutorUnavailable(f"the {name} mode needs the engine: {ENGINE_HINT}") from exc
