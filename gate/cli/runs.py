"""`lpips-gate submit | wait | results`: the producer side (services in gate.runs.service)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gate.errors import EXIT_ERROR, VERDICT_EXIT_CODES, GateError
from gate.settings import Settings
from gate.vocabulary import MISSING_MODES, NETS, PRECISIONS, RESIZE_MODES, VERSIONS

if TYPE_CHECKING:
    from gate.judging.policy import PolicySet

DEFAULT_WAIT_SECONDS = 3600.0


@click.command()
@click.argument("ref_dir", type=click.Path(path_type=Path))
@click.argument("cand_dir", type=click.Path(path_type=Path))
@click.option("--suite", required=True, help="Suite name: its runs share alerts and the drift baseline.")
@click.option("--threshold", type=float, default=None,
              help="Distance above which a pair fails; the run is then judged by it, whoever judges it "
                   "(without it, by the gate daemon's policies).")
@click.option("--net", type=click.Choice(NETS), default=None, help="Backbone (default: LPIPS_GATE_NET).")
@click.option("--version", type=click.Choice(VERSIONS), default=None,
              help="LPIPS weights version (default: LPIPS_GATE_VERSION).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Network precision (default: LPIPS_GATE_PRECISION).")
@click.option("--maps", is_flag=True, help="Also store a spatial distance map per pair.")
@click.option("--missing", type=click.Choice(MISSING_MODES), default="fail", show_default=True,
              help="What new frames (no reference) and missing ones (no candidate) do: fail the run, pass "
                   "it with a warning, or nothing.")
@click.option("--meta", "meta_items", multiple=True, metavar="KEY=VALUE",
              help="Stored with the run (commit, pipeline, author...); repeatable.")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default="none", show_default=True,
              help="Resize ref to cand's size, or cand to ref's, when they differ (as compare does).")
@click.option("--exposure", type=float, default=0.0, show_default=True,
              help="OpenEXR input: exposure in stops before clamping and the sRGB curve (as compare does).")
@click.option("--json", "as_json", is_flag=True, help='Print {"run": ID, "submitted": N}.')
@click.pass_obj
def submit(settings: Settings, ref_dir: Path, cand_dir: Path, suite: str, threshold: float | None,
           net: str | None, version: str | None, precision: str | None, maps: bool, missing: str,
           meta_items: tuple[str, ...], resize: str, exposure: float, as_json: bool) -> None:
    """Compare every image under CAND_DIR with the one at the same relative path under REF_DIR.

    Both folders must lie inside LPIPS_GATE_IMAGE_ROOT. With LPIPS_GATE_BROKER_URL set the pairs are
    queued for the workers; without it they are computed here (needs lpips-gate[worker]). New and
    missing frames, and files that link out of the image root, are stored as such, not computed."""
    from gate.logs import configure
    from gate.runs.service import dispatched, parse_meta, submit_run, validate_options
    from gate.store.opening import open_store

    validate_options(suite, threshold, missing)
    meta = parse_meta(meta_items)
    configure(settings)  # the embedded executor logs; stdout is for the answer
    with open_store(settings) as engine:
        run_id, ids = submit_run(settings, engine, ref_dir, cand_dir, suite=suite, threshold=threshold, net=net,
                                 version=version, precision=precision, maps=maps, missing=missing, meta=meta,
                                 resize=resize, exposure=exposure)
    text = f"run {run_id}: {len(ids)} comparisons {dispatched(settings, len(ids))}"
    echo(as_json, {"run": run_id, "submitted": len(ids)}, text)


@click.command()
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--timeout", type=click.FloatRange(min=0), default=DEFAULT_WAIT_SECONDS, show_default=True,
              help="Seconds to wait before giving up (exit 2).")
@click.option("--threshold", type=float, default=None,
              help="Distance above which a pair fails: the run's policy if it records none yet (else it must agree).")
@click.option("--policies", "policies_file", type=click.Path(path_type=Path), default=None,
              help="Policy file (.toml or .yaml): the run's policy if it records none yet (else it must agree).")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON (errors too: {\"error\", \"exit\"}).")
@click.pass_obj
def wait(settings: Settings, run_id: int, timeout: float, threshold: float | None, policies_file: Path | None,
         as_json: bool) -> None:
    """Wait until every comparison of RUN has finished, judge it by its policy, print it and exit 0
    (pass), 1 (fail) or 2 (error, timeout, or not judged).

    The run is judged by the policy it records; --threshold/--policies become it when it records none
    yet. A run with neither is left to the gate daemon (exit 2: no verdict yet)."""
    from gate.logs import configure
    from gate.runs.review import wait_for_run

    policies = None if policies_file is None else load_policies(policies_file)
    configure(settings)  # judging may open alerts, which log
    with progress_bar(f"run {run_id}") as progress:
        summary = wait_for_run(settings, run_id, timeout=timeout, policies=policies, threshold=threshold,
                               progress=progress)
    echo(as_json, summary, summary_text(summary))
    exit_with_verdict(summary)


@click.command()
@click.option("--run", "run_id", metavar="RUN", type=int, required=True, help="Run id printed by submit.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"run", "suite", "meta", "comparisons": [one object per comparison]}.')
@click.pass_obj
def results(settings: Settings, run_id: int, as_json: bool) -> None:
    """Print the comparisons of a run, in submission order (after its metadata, if any)."""
    from gate.runs.service import run_results
    from gate.store import session_scope
    from gate.store.opening import open_store

    with open_store(settings) as engine, session_scope(engine) as session:
        shown = run_results(session, run_id)
    meta = [f"meta {key}={value}" for key, value in shown["meta"].items()]
    echo(as_json, shown, "\n".join([*meta, *(pair_line(row) for row in shown["comparisons"])]))


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """Yields `progress(finished, total)`; draws only on a terminal, so piped stderr stays clean."""
    stderr = click.get_text_stream("stderr")
    if not stderr.isatty():
        yield lambda _finished, _total: None
        return
    with ExitStack() as stack:
        bars: list[Any] = []  # opened at the first call, when the total is known

        def advance(finished: int, total: int) -> None:
            if not bars:
                bars.append(stack.enter_context(click.progressbar(length=total, label=label, file=stderr)))
            bars[0].update(finished - bars[0].pos)

        yield advance


def summary_text(summary: dict[str, Any]) -> str:
    """A run as text: its verdict (or pending), why new or missing frames fail it, warnings, then one
    line per pair."""
    lines = [f"run {summary['run']} (suite {summary['suite']}): verdict {summary['verdict'] or 'pending'}"]
    lines += [f"  {reason}" for reason in summary.get("reasons", [])]
    lines += [f"  warning: {warning}" for warning in summary.get("warnings", [])]
    lines += [pair_line(pair) for pair in summary["pairs"]]
    return "\n".join(lines)


def pair_line(pair: dict[str, Any]) -> str:
    """A pair or comparison as text: its verdict once judged, else its status."""
    distance = "-" if pair["distance"] is None else f"{pair['distance']:.4f}"
    error = f"  ({pair['error']})" if pair["error"] else ""
    return f"{pair.get('verdict') or pair['status']:<7} {distance:>8}  {pair['ref']} -> {pair['cand']}{error}"


def exit_with_verdict(summary: dict[str, Any]) -> None:
    """0 pass, 1 fail, 2 error; a run without a verdict (no policy to judge it by) is not a pass: 2."""
    if summary["verdict"] is None:
        click.echo(f"run {summary['run']}: not judged: it records no policy (give --threshold or --policies, "
                   "or let the gate daemon judge it)", err=True)
    click.get_current_context().exit(VERDICT_EXIT_CODES.get(summary["verdict"], EXIT_ERROR))


def load_policies(path: Path | None) -> PolicySet:
    """The policy file named by --policies, or the defaults."""
    from gate.judging.policy import PolicyError, PolicySet
    from gate.judging.policy import load_policies as load

    if path is None:
        return PolicySet()
    try:
        return load(path)
    except PolicyError as exc:
        raise GateError(f"--policies: {exc}") from exc


def echo(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data) if as_json else text)
