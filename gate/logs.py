"""structlog set up once per process from Settings: JSON lines (or console) on stderr, ids bound per task.
Without LPIPS_GATE_LOG_JSON the form follows stderr: a person at a terminal reads console lines, a
log collector (a pipe, a file, a container runtime) gets JSON.

A command's stdout is its answer, so every command that may log calls `configure` before it does."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, TextIO, cast

import structlog

if TYPE_CHECKING:
    from gate.settings import Settings

SECRET_KEYS = ("password", "secret", "token", "database_url", "broker_url")


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Credentials never reach a log line, whatever a caller binds."""
    for key in list(event):
        if any(s in key.lower() for s in SECRET_KEYS):
            event[key] = "***"
    return event


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time: a stream captured when logging was configured
    may be gone by the time a line is written (a test runner's, a redirection that ended)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


STDERR = _CurrentStderr()


def json_logs(settings: Settings) -> bool:
    """LPIPS_GATE_LOG_JSON if set, else JSON unless stderr is a terminal."""
    if settings.log_json is not None:
        return settings.log_json
    return not sys.stderr.isatty()


def renderer(settings: Settings) -> Any:
    return structlog.processors.JSONRenderer() if json_logs(settings) else structlog.dev.ConsoleRenderer()


def configure(settings: Settings) -> None:
    level = logging.getLevelName(settings.log_level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer(settings),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, STDERR)),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
