"""Errors any layer may raise and the exit codes they end in. A leaf: it imports nothing of ours, so
services raise these without knowing the CLI, and the CLI turns them into messages and exit codes."""

from __future__ import annotations

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
VERDICT_EXIT_CODES = {"pass": EXIT_OK, "fail": EXIT_FAIL, "error": EXIT_ERROR}

ENGINE_MODULES = frozenset({"torch", "torchvision", "PIL", "safetensors"})  # only lpips-gate[worker] has them
ENGINE_HINT = "pip install 'lpips-gate[worker]'"


class GateError(Exception):
    """Bad input or a missing prerequisite, in one line naming it: printed as such, exit 2. `run`: the
    run it concerns, where one exists (a timeout), so a script can come back to it."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, run: int | None = None) -> None:
        super().__init__(message)
        self.run = run


def error_document(message: str, *, run: int | None = None) -> dict[str, object]:
    """What `--json` prints for an outcome without a verdict: {"error", "exit": 2} and the run if any."""
    return {"error": message, "exit": EXIT_ERROR, **({} if run is None else {"run": run})}


class EngineMissing(GateError):
    """The engine (torch) is needed and not installed."""


class StoreNotReady(GateError):
    """The database is unreachable, or not migrated to the schema this version needs."""


class BrokerUnreachable(GateError):
    """LPIPS_GATE_BROKER_URL is set and the broker does not answer."""
