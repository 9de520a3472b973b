"""The embedded executor (entry point `embedded` in `lpips_gate.executors`): computes queued
comparisons in this process, without a broker, through the worker's own `Processor`, so a row comes
out exactly as a Celery worker would write it; it loads no broker library. Transient failures are
tried again here, after the same delay a worker's re-sent message would wait, until `max_attempts`
ends them."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from gate.logs import configure
from worker import decoding
from worker.keeper import Keeper, beat, heartbeat_interval_s
from worker.processor import Processor, Store, worker_name
from worker.runtime import Models
from worker.tuning import tune_process


def run_comparisons(settings, comparison_ids: list[int]) -> None:
    """Compute the comparisons with these ids (those still queued) and record their outcomes."""
    ids = _checked(comparison_ids)
    if not ids:
        return
    _logs_to_stderr(settings)
    tune_process()
    name = worker_name("embedded:")
    store = Store(settings.database_url, retry_s=settings.store_retry_s)
    again: list[int] = []
    processor = Processor(
        settings, store=store, models=Models(settings), name=name, requeue=lambda retry, _delay_s: again.extend(retry)
    )
    keeper = Keeper(interval_s=heartbeat_interval_s(settings), beat=beat(store, name)).start()
    try:
        while ids:
            window = settings.pairs_per_message  # claimed as a worker takes a message: progress shows as it runs
            for start in range(0, len(ids), window):
                processor.process(ids[start : start + window])
            ids, again[:] = list(again), []
            if ids:
                time.sleep(processor.requeue_delay_s)
    finally:
        keeper.stop()
        store.dispose()
        decoding.shutdown()


def _logs_to_stderr(settings) -> None:
    """A command's stdout is its answer: unconfigured structlog would print there. Unless the caller set
    logging up, log to stderr, warnings and errors only (one line per pair is a worker's log, not a CLI's)
    unless LPIPS_GATE_LOG_LEVEL asks for more."""
    if structlog.is_configured():
        return
    explicit = "log_level" in settings.model_fields_set
    configure(settings if explicit else settings.model_copy(update={"log_level": "WARNING"}))


def _checked(comparison_ids: Sequence[int]) -> list[int]:
    if isinstance(comparison_ids, (str, bytes)) or not isinstance(comparison_ids, Sequence):
        raise TypeError(f"comparison_ids: expected a list of ints, got {type(comparison_ids).__name__}")
    bad = [i for i in comparison_ids if type(i) is not int or i < 1]
    if bad:
        raise ValueError(f"comparison_ids: expected positive ints, got {bad[0]!r}")
    return list(dict.fromkeys(comparison_ids))
