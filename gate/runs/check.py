"""`check`, the CI step, as one service call: submit two folders, wait for the comparisons, judge the
run by the given policies and write the report and JUnit. Everything refusable is refused before any
work is queued."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.judging.policy import PolicySet, policy_for
from gate.judging.verdict import judge_run
from gate.report.assemble import check_writable, report_run, write_artefacts
from gate.runs.service import Progress, poll_until_finished, submit_run, validate_options
from gate.settings import Settings
from gate.store import session_scope
from gate.store.opening import open_store
from gate.errors import GateError


@dataclass(frozen=True)
class CheckRequest:
    ref_dir: Path
    cand_dir: Path
    suite: str
    threshold: float | None
    policies: PolicySet
    net: str | None = None
    precision: str | None = None
    timeout: float = 3600.0
    report: Path | None = None
    junit: Path | None = None


def check(settings: Settings, request: CheckRequest, *, progress: Progress | None = None) -> dict[str, Any]:
    """The judged run: {"run", "suite", "verdict", "pairs"}."""
    validate_options(request.suite, request.threshold)
    check_writable(report=request.report, junit=request.junit)
    _require_max_distance(request.policies, suite=request.suite, net=request.net or settings.net,
                          threshold=request.threshold)
    with open_store(settings) as engine:
        run_id, _ids = submit_run(settings, engine, request.ref_dir, request.cand_dir, suite=request.suite,
                                  threshold=request.threshold, net=request.net, version=None,
                                  precision=request.precision, maps=request.report is not None)
        poll_until_finished(engine, run_id, timeout=request.timeout, progress=progress)
        summary = judge_run(engine, run_id=run_id, policies=request.policies, settings=settings)
        if request.report or request.junit:
            with session_scope(engine) as session:
                shown = report_run(session, summary, request.policies, settings.image_root)
            write_artefacts(shown, report=request.report, junit=request.junit)
    return summary


def _require_max_distance(policies: PolicySet, *, suite: str, net: str, threshold: float | None) -> None:
    """Refuse before computing anything when no threshold could judge the suite's pairs."""
    if threshold is not None:
        return
    suite_policies = policies.suites.get(suite)
    versioned = suite_policies.nets.values() if suite_policies else ()
    if policy_for(policies, suite=suite, net=net, weights_version="").max_distance is None and not any(
        policy.max_distance is not None for policy in versioned
    ):
        raise GateError(f"--threshold: none given and the policies set no max_distance for suite {suite!r}")
