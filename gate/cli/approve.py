"""`lpips-gate approve`: promote a run's candidates to references (gate.runs.approve)."""

from __future__ import annotations

import click

from gate.cli.runs import echo
from gate.settings import Settings


@click.command()
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--only", metavar="GLOB", default=None,
              help="Only the frames whose path under the candidate folder matches (fnmatch), e.g. 'shots/hero_*'.")
@click.option("--by", default=None, help="Who approves: recorded with each file.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"run", "approved": [{"ref", "cand", "sha256_before", "sha256_after"}], "skipped"}.')
@click.pass_obj
def approve(settings: Settings, run_id: int, only: str | None, by: str | None, as_json: bool) -> None:
    """Make RUN's candidates the references: each replaces its reference atomically, new frames create
    theirs, missing frames are left as they are; recorded with the files' sha256 before and after.

    Refused (exit 2, nothing changed) when the run is not finished, or a reference or candidate
    changed since the run measured it."""
    from gate.runs.approve import approve_run

    shown = approve_run(settings, run_id, only=only, by=by)
    lines = [f"approved {row['ref']} <- {row['cand']}" for row in shown["approved"]]
    lines += [f"skipped  {row['ref']}: {row['reason']}" for row in shown["skipped"]]
    lines.append(f"run {run_id}: {len(shown['approved'])} reference(s) replaced")
    echo(as_json, shown, "\n".join(lines))
