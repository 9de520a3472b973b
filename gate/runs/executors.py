"""In-process executors, found through the entry-point group `lpips_gate.executors`, so that `gate`
runs the engine without importing it (the engine is an optional install: lpips-gate[worker]).

An executor is `run(settings, comparison_ids: list[int]) -> None`: it computes the queued
comparisons with those ids and records the results in the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points

from gate.errors import ENGINE_HINT, ENGINE_MODULES, EngineMissing
from gate.settings import Settings

EXECUTOR_GROUP = "lpips_gate.executors"
EMBEDDED = "embedded"

Executor = Callable[[Settings, list[int]], None]


def load_executor(name: str) -> Executor:
    """The executor, wrapped so that an engine missing at load or call time is EngineMissing."""
    matches = entry_points(group=EXECUTOR_GROUP, name=name)
    if not matches:
        raise EngineMissing(f"no executor {name!r} in the entry-point group {EXECUTOR_GROUP}: reinstall lpips-gate")
    with _engine_required(name):
        executor: Executor = next(iter(matches)).load()

    def run(settings: Settings, comparison_ids: list[int]) -> None:
        with _engine_required(name):
            executor(settings, list(comparison_ids))

    return run


@contextmanager
def _engine_required(name: str) -> Iterator[None]:
    """An ImportError of an engine module (torch, ...) means the optional install is missing."""
    try:
        yield
    except ImportError as exc:
        if exc.name not in ENGINE_MODULES:
            raise
        raise EngineMissing(f"the {name} mode needs the engine: {ENGINE_HINT}") from exc
