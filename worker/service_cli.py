"""`lpips-gate worker` and `lpips-gate health`, registered as entry points in `lpips_gate.commands`."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

import click

from gate import vocabulary
from gate.errors import EXIT_ERROR, EXIT_OK, GateError

POOLS = ("prefork", "solo")


def plan(*, pool: str, concurrency: int | None, gpus: int, cpus: int) -> tuple[int, int]:
    """(pool processes, torch threads per process): one process per GPU, or one on the CPU with
    every thread; an explicit concurrency shares the CPU threads out."""
    if pool == "solo" and concurrency not in (None, 1):
        raise GateError(f"--pool solo runs one task at a time: --concurrency must be 1, got {concurrency}")
    processes = concurrency or max(1, gpus)
    return processes, max(1, cpus // processes)


def gpu_count(device: str) -> int:
    """Counted through NVML, so the prefork parent never initialises CUDA before it forks."""
    if device == "cpu":
        return 0
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.device_count()


@click.command()
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Pool processes (default: one per GPU; on the CPU one, using every thread).",
)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default="prefork",
    show_default=True,
    help="prefork: tasks run in child processes (time limits, crash isolation); solo: in this one.",
)
@click.option(
    "--device",
    type=click.Choice(vocabulary.DEVICES),
    default=None,
    help="Default: LPIPS_GATE_DEVICE (auto: the GPUs if there are any).",
)
@click.option(
    "--precision",
    type=click.Choice(vocabulary.PRECISIONS),
    default=None,
    help="Compute every run at this precision (default: each run's own); rows record the one used.",
)
@click.pass_obj
def worker(settings, concurrency, pool, device, precision):
    """Consume comparisons from the broker (LPIPS_GATE_BROKER_URL) until stopped."""
    if not settings.broker_url:
        raise GateError(
            "no broker configured (LPIPS_GATE_BROKER_URL); without one, `lpips-gate submit` computes in-process"
        )
    if device:
        settings = settings.model_copy(update={"device": device})
    gpus = gpu_count(settings.device)
    if settings.device == "cuda" and gpus == 0:
        raise GateError("--device cuda asked for, but no CUDA device is available")
    processes, threads = plan(pool=pool, concurrency=concurrency, gpus=gpus, cpus=os.cpu_count() or 1)

    queue = _store_queue(settings)

    from gate.logs import configure, get_logger, json_logs

    configure(settings)
    _celery_logs_like_ours(settings)
    if settings.metrics_port is not None:
        _serve_metrics(settings, queue)
    from worker.celery_app import create_app  # torch: only once the arguments are known to be good

    app = create_app(settings, queue=queue, precision=precision, threads=threads)
    get_logger("lpips_gate.worker").info(
        "worker starting",
        pool=pool,
        queue=queue,
        processes=processes,
        gpus=gpus,
        threads=threads,
        metrics_port=settings.metrics_port,
    )
    banner = ["--quiet"] if json_logs(settings) else []  # JSON logs: no ASCII-art banner among the lines
    app.worker_main(
        [
            *banner,
            "worker",
            f"--pool={pool}",
            f"--concurrency={processes}",
            f"--queues={queue}",
            f"--hostname=lpips-{os.getpid()}@%h",
            f"--loglevel={settings.log_level.upper()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def _store_queue(settings) -> str:
    """The queue of this worker's store: workers only take messages of the database they write to."""
    from gate.runs.queue import StoreNotReady, store_queue_at

    try:
        return store_queue_at(settings.database_url, settings)
    except StoreNotReady as exc:
        raise GateError(str(exc)) from exc


def _serve_metrics(settings, queue: str) -> None:
    """The endpoint in this (the parent) process, summing every pool process's counts."""
    folder = tempfile.mkdtemp(prefix="lpips-gate-metrics-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    from worker import metrics  # after the variable: prometheus_client reads it when metrics are created

    try:
        metrics.serve(settings, queue=queue)
    except OSError as exc:
        raise GateError(f"metrics port {settings.metrics_port}: {exc.strerror}") from exc


def _celery_logs_like_ours(settings) -> None:
    """Celery's own lines (stdlib logging) rendered as ours are: one JSON object a line, redacted."""
    import logging
    import sys

    import structlog
    from celery import signals

    from gate.logs import redact, renderer
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer(settings)],
    )

    def setup(loglevel=None, **_signal) -> None:
        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(formatter)
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(loglevel or settings.log_level.upper())

    signals.setup_logging.connect(setup, weak=False)  # Celery then leaves logging to us


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: healthy, and each check's ok and detail.")
@click.option(
    "--check",
    "checks",
    type=click.Choice(["live", "ready", "model"]),
    multiple=True,
    help="Only these checks (default: all). `live` alone needs neither torch nor the network.",
)
@click.pass_context
def health(ctx, as_json, checks):
    """Is this worker host live, ready and computing correct distances? Exit 0 if so, 2 if not."""
    from worker.health import CHECKS, report

    result = report(ctx.obj, tuple(checks) or CHECKS)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for name, check in result["checks"].items():
            click.echo(f"{name:6} {'ok' if check['ok'] else 'FAIL':5} {check['detail']}")
    ctx.exit(EXIT_OK if result["healthy"] else EXIT_ERROR)
