"""`lpips-gate submit | wait | results`: the producer side of the gate.

`submit` stores a run (the store is the source of truth) and then either sends its comparison ids
to the broker or, with no broker configured, computes them in this process through the `embedded`
executor. `wait` polls the store and judges a finished run that carries its own threshold;
`results` only reads. `check` (gate.commands.gate) is built on the public functions here:
`submit_run`, `poll_until_finished`, `summary_text`, `open_store`. SQLAlchemy, Alembic and Celery
are imported when a command runs: gate.cli imports this module, and every other command would pay
for them."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import click

from gate.settings import Settings

NETS = ("alex", "vgg", "squeeze")
VERSIONS = ("0.0", "0.1")
PRECISIONS = ("fp32", "bf16", "fp16")
FINISHED = ("done", "error")
POLL_SECONDS = 0.5
DEFAULT_WAIT_SECONDS = 3600.0


def failure(message: str) -> click.ClickException:
    """A usage failure (exit 2, message on stderr, no traceback)."""
    from gate.cli import UsageFailure  # gate.cli imports this module while it loads

    return UsageFailure(message)


# --- submit ------------------------------------------------------------------------------------


@click.command()
@click.argument("ref_dir", type=click.Path(path_type=Path))
@click.argument("cand_dir", type=click.Path(path_type=Path))
@click.option("--suite", required=True, help="Suite name: its runs share alerts and the drift baseline.")
@click.option("--threshold", type=float, default=None, help="Distance above which a pair fails.")
@click.option("--net", type=click.Choice(NETS), default=None, help="Backbone (default: LPIPS_GATE_NET).")
@click.option("--version", type=click.Choice(VERSIONS), default=None,
              help="LPIPS weights version (default: LPIPS_GATE_VERSION).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Network precision (default: LPIPS_GATE_PRECISION).")
@click.option("--maps", is_flag=True, help="Also store a spatial distance map per pair.")
@click.option("--json", "as_json", is_flag=True, help='Print {"run": ID, "submitted": N}.')
@click.pass_obj
def submit(settings: Settings, ref_dir: Path, cand_dir: Path, suite: str, threshold: float | None,
           net: str | None, version: str | None, precision: str | None, maps: bool, as_json: bool) -> None:
    """Compare every image under CAND_DIR with the one at the same relative path under REF_DIR.

    Both folders must lie inside LPIPS_GATE_IMAGE_ROOT. With LPIPS_GATE_BROKER_URL set the pairs are
    queued for the workers; without it they are computed here (needs lpips-gate[worker])."""
    from gate.logs import configure

    configure(settings)  # the embedded executor logs; stdout is for the answer
    run_id, ids = submit_run(settings, ref_dir, cand_dir, suite=suite, threshold=threshold, net=net,
                             version=version, precision=precision, maps=maps)
    text = f"run {run_id}: {len(ids)} comparisons {dispatched(settings, len(ids))}"
    _echo(as_json, {"run": run_id, "submitted": len(ids)}, text)


def submit_run(settings: Settings, ref_dir: Path, cand_dir: Path, *, suite: str, threshold: float | None,
               net: str | None, version: str | None, precision: str | None, maps: bool) -> tuple[int, list[int]]:
    """Store a run comparing the two folders and hand its comparisons to the broker, or compute them
    here without one; returns the run id and its comparison ids. Unset net, version and precision
    come from Settings. Everything that can be refused is refused before the run is stored."""
    validate_options(suite, threshold)
    pairs = _pair(ref_dir, cand_dir, settings.image_root)
    dispatch = _broker_dispatch(settings) if settings.broker_url else _embedded_dispatch(settings)
    with open_store(settings) as engine:
        run_id, ids = _create_run(engine, suite=suite, pairs=pairs, threshold=threshold,
                                  net=net or settings.net, version=version or settings.version,
                                  precision=precision or settings.precision, options=_run_options(pairs, maps))
        dispatch(engine, run_id, ids)
    return run_id, ids


def _run_options(pairs: list[tuple[str, str]], maps: bool) -> dict[str, Any]:
    """What the workers need beyond the pairs; HDR input records the tone map its distances depend on."""
    from gate.tonemap import HDR_SUFFIXES, tonemap_policy

    options: dict[str, Any] = {"maps": maps}
    if any(path.lower().endswith(HDR_SUFFIXES) for pair in pairs for path in pair):
        options["tonemap"] = tonemap_policy(0.0)
    return options


def dispatched(settings: Settings, count: int) -> str:
    """What `submit_run` did with `count` comparisons: the broker gets messages of pairs_per_message ids."""
    if settings.broker_url:
        return f"queued in {math.ceil(count / settings.pairs_per_message)} messages"
    return "computed in-process"


def validate_options(suite: str, threshold: float | None) -> None:
    if not suite.strip():
        raise failure("--suite: must not be empty")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise failure(f"--threshold: must be a finite number >= 0, got {threshold}")


def _pair(ref_dir: Path, cand_dir: Path, image_root: Path) -> list[tuple[str, str]]:
    from gate.pairing import PairingError, pair_dirs

    try:
        return pair_dirs(ref_dir, cand_dir, image_root=image_root)
    except PairingError as exc:
        raise failure(str(exc)) from exc


def _create_run(engine: Any, *, suite: str, **run: Any) -> tuple[int, list[int]]:
    from gate.store import repository as repo
    from gate.store import session_scope

    with session_scope(engine) as session:
        created = repo.create_run(session, suite_name=suite, **run)
        return created.id, [c.id for c in repo.list_comparisons(session, run_id=created.id)]


Dispatch = Callable[[Any, int, list[int]], None]


def _broker_dispatch(settings: Settings) -> Dispatch:
    """Checks the broker before the run is stored, so an unreachable one leaves no run behind."""
    from kombu import Connection
    from kombu.exceptions import OperationalError

    from gate.queue import enqueue, make_celery, store_queue

    try:
        with Connection(settings.broker_url) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=5)
    except OperationalError as exc:
        raise failure(f"broker unreachable (LPIPS_GATE_BROKER_URL): {exc}") from exc

    def send(engine: Any, run_id: int, ids: list[int]) -> None:
        try:
            enqueue(make_celery(settings, queue=store_queue(engine)), ids, per_message=settings.pairs_per_message)
        except OperationalError as exc:
            _give_up(engine, ids, reason=f"not queued: broker unreachable: {exc}")
            raise failure(f"run {run_id}: broker unreachable, comparisons marked as errors: {exc}") from exc

    return send


def _give_up(engine: Any, ids: list[int], *, reason: str) -> None:
    """Comparisons that no worker will ever see end as errors, so `wait` does not wait for them."""
    from gate.store import repository as repo
    from gate.store import session_scope

    with session_scope(engine) as session:
        for comparison_id in ids:
            repo.record_error(session, comparison_id=comparison_id, reason=reason, final=True)


def _embedded_dispatch(settings: Settings) -> Dispatch:
    """Loads the engine before the run is stored, so a missing one leaves no run behind."""
    from gate.executors import EMBEDDED, ExecutorUnavailable, load_executor

    try:
        executor = load_executor(EMBEDDED)
    except ExecutorUnavailable as exc:
        raise failure(str(exc)) from exc

    def compute(_engine: Any, _run_id: int, ids: list[int]) -> None:
        try:
            executor(settings, ids)
        except ExecutorUnavailable as exc:
            raise failure(str(exc)) from exc

    return compute


# --- wait and results --------------------------------------------------------------------------


@click.command()
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--timeout", type=click.FloatRange(min=0), default=DEFAULT_WAIT_SECONDS, show_default=True,
              help="Seconds to wait before giving up (exit 2).")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.pass_obj
def wait(settings: Settings, run_id: int, timeout: float, as_json: bool) -> None:
    """Wait until every comparison of RUN is done or failed, judge it by its threshold, then print it.

    A run submitted without --threshold stays pending here: the gate daemon judges it by its policies."""
    from gate.logs import configure
    from gate.store import session_scope

    configure(settings)  # judging may open alerts, which log
    with open_store(settings) as engine:
        poll_until_finished(engine, run_id, timeout=timeout)
        judge_if_possible(engine, run_id, settings)
        with session_scope(engine) as session:
            summary = run_summary(session, run_id)
    _echo(as_json, summary, summary_text(summary))


def run_summary(session: Any, run_id: int) -> dict[str, Any]:
    """The run as `wait` prints it (the gate fills in the verdict)."""
    from gate.store import repository as repo

    run = repo.get_run(session, run_id=run_id)
    pairs = [{"ref": c.ref, "cand": c.cand, "status": c.status, "distance": c.distance, "error": c.error}
             for c in repo.list_comparisons(session, run_id=run_id)]
    return {"run": run.id, "suite": run.suite.name, "verdict": run.verdict, "pairs": pairs}


def judge_if_possible(engine: Any, run_id: int, settings: Settings) -> None:
    """Judge a finished run with the default policies and its own threshold, so it has a verdict as
    soon as it is seen to finish; one that cannot be judged so (no threshold) is left pending."""
    from gate.policy import PolicySet
    from gate.verdict import EvaluationError, judge_run

    with suppress(EvaluationError):
        judge_run(engine, run_id=run_id, policies=PolicySet(), settings=settings)


def poll_until_finished(engine: Any, run_id: int, *, timeout: float, interval: float = POLL_SECONDS) -> None:
    """Return once every comparison of the run is done or failed, looking every `interval` seconds;
    a usage failure when the run does not exist or `timeout` seconds pass first (naming the progress
    so far)."""
    from gate.store import repository as repo
    from gate.store import session_scope

    total = _run_size(engine, run_id)
    deadline = time.monotonic() + timeout
    with _progress_bar(total, f"run {run_id}") as advance_to:
        while True:
            with session_scope(engine) as session:
                progress = repo.run_progress(session, run_id=run_id)
            finished = sum(progress[status] for status in FINISHED)
            advance_to(finished)
            remaining = deadline - time.monotonic()
            if finished == total:
                return
            if remaining <= 0:
                raise failure(f"run {run_id}: timed out after {timeout:g} s (done {finished} of {total})")
            time.sleep(min(interval, remaining))


def _run_size(engine: Any, run_id: int) -> int:
    from gate.store import repository as repo
    from gate.store import session_scope

    with session_scope(engine) as session:
        _require_run(session, run_id)
        return sum(repo.run_progress(session, run_id=run_id).values())


@contextmanager
def _progress_bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Yields `advance_to(finished)`; draws only on a terminal, so piped stderr stays clean."""
    stderr = click.get_text_stream("stderr")
    if not stderr.isatty():
        yield lambda _finished: None
        return
    with click.progressbar(length=total, label=label, file=stderr) as bar:
        yield lambda finished: bar.update(finished - bar.pos)


def summary_text(summary: dict[str, Any]) -> str:
    """A run as text: its verdict (or pending), then one line per pair."""
    lines = [f"run {summary['run']} (suite {summary['suite']}): verdict {summary['verdict'] or 'pending'}"]
    lines += [_pair_line(pair) for pair in summary["pairs"]]
    return "\n".join(lines)


@click.command()
@click.option("--run", "run_id", metavar="RUN", type=int, required=True, help="Run id printed by submit.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per comparison.")
@click.pass_obj
def results(settings: Settings, run_id: int, as_json: bool) -> None:
    """Print the comparisons of a run, in submission order."""
    from gate.store import repository as repo
    from gate.store import session_scope

    with open_store(settings) as engine, session_scope(engine) as session:
        _require_run(session, run_id)
        rows = [comparison_result(c) for c in repo.list_comparisons(session, run_id=run_id)]
    _echo(as_json, rows, "\n".join(_pair_line(row) for row in rows))


def comparison_result(comparison: Any) -> dict[str, Any]:
    """One comparison as `results` prints it; `version` is the weights version that produced it."""
    return {"ref": comparison.ref, "cand": comparison.cand, "status": comparison.status,
            "distance": comparison.distance, "net": comparison.net, "version": comparison.weights_version,
            "attempts": comparison.attempts, "error": comparison.error}


def _pair_line(pair: dict[str, Any]) -> str:
    distance = "-" if pair["distance"] is None else f"{pair['distance']:.4f}"
    error = f"  ({pair['error']})" if pair["error"] else ""
    return f"{pair['status']:<7} {distance:>8}  {pair['ref']} -> {pair['cand']}{error}"


# --- shared ------------------------------------------------------------------------------------


@contextmanager
def open_store(settings: Settings) -> Iterator[Any]:
    """An engine on a database migrated to head (the embedded SQLite file is created on first use);
    an unreachable or unusable database is a usage failure naming it (password hidden)."""
    from alembic.util import CommandError
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError, OperationalError

    from gate.store import make_engine, migrate

    try:
        shown = make_url(settings.database_url).render_as_string(hide_password=True)
    except ArgumentError as exc:
        raise failure(f"LPIPS_GATE_DATABASE_URL: {exc}") from exc
    try:
        if migrate.current_revision(settings.database_url) != migrate.head_revision():
            migrate.upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        try:
            yield engine
        finally:
            engine.dispose()
    except OperationalError as exc:
        raise failure(f"database {shown}: {exc.orig}") from exc
    except CommandError as exc:
        raise failure(f"database {shown}: cannot migrate to head: {exc}") from exc


def _require_run(session: Any, run_id: int) -> None:
    from gate.store.models import Run

    if session.get(Run, run_id) is None:
        raise failure(f"run {run_id}: not found")


def _echo(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data) if as_json else text)
