"""`check`, the CI step, as one service call: submit two folders with the given policies and threshold
as the run's own policy, wait for the comparisons, judge the run by that policy (whoever judges it
first, the gate daemon included, gives the same verdict; the suite's calibration fills the thresholds
it leaves unset) and write the report and JUnit. Everything refusable is refused before any work is
queued."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from gate.calibration.store import calibrated
from gate.errors import GateError
from gate.judging.policy import PolicySet, SuitePolicies, suite_policy
from gate.judging.verdict import judge_run
from gate.report.assemble import check_writable, report_run, write_artefacts
from gate.report.html import ReportPair, ReportRun
from gate.report.junit import write_junit
from gate.runs.service import (
    Progress,
    poll_until_finished,
    submit_run,
    validate_compare_options,
    validate_options,
)
from gate.settings import Settings
from gate.store import session_scope
from gate.store.opening import missing_sqlite_file, open_store


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
    meta: dict[str, str] | None = None
    missing: str = "fail"
    resize: str = "none"
    exposure: float = 0.0


def check(settings: Settings, request: CheckRequest, *, progress: Progress | None = None) -> dict[str, Any]:
    """The judged run (gate.judging.verdict.run_summary)."""
    validate_options(request.suite, request.threshold, request.missing)
    validate_compare_options(request.resize, request.exposure)
    check_writable(report=request.report, junit=request.junit)
    net = request.net or settings.net
    own = suite_policy(request.policies, suite=request.suite, threshold=request.threshold, net=net)  # as recorded
    _require_max_distance(settings, own, suite=request.suite, net=net)
    with open_store(settings) as engine:
        run_id, _ids = submit_run(settings, engine, request.ref_dir, request.cand_dir, suite=request.suite,
                                  threshold=request.threshold, net=request.net, version=None,
                                  precision=request.precision,
                                  maps=request.report is not None or request.junit is not None,
                                  policies=request.policies, meta=request.meta, missing=request.missing,
                                  resize=request.resize, exposure=request.exposure)
        poll_until_finished(engine, run_id, timeout=request.timeout, progress=progress)
        summary = judge_run(engine, run_id=run_id, policies=None, settings=settings)
        if request.report or request.junit:
            with session_scope(engine) as session:
                shown = report_run(session, summary, settings.image_root)
            write_artefacts(_html_view(shown), report=request.report, junit=None)
            if request.junit is not None:
                write_junit(shown, request.junit)
    return summary


def _html_view(shown: dict[str, Any]) -> dict[str, Any]:
    """The judged run as the HTML report's model declares it (gate.report.html.ReportRun): fields it
    does not declare, and pairs of statuses it cannot show, are left out of the page."""
    statuses = get_args(ReportPair.model_fields["status"].annotation)
    pairs = [{key: value for key, value in pair.items() if key in ReportPair.model_fields}
             for pair in shown["pairs"] if pair["status"] in statuses]
    return {**{key: value for key, value in shown.items() if key in ReportRun.model_fields}, "pairs": pairs}


def _require_max_distance(settings: Settings, policy: SuitePolicies, *, suite: str, net: str) -> None:
    """Refuse before computing anything when neither the policies nor a calibration of the suite for
    `net` could judge its pairs; a store not created yet holds no calibration, and is not created to
    find that out."""
    if policy.policy_for(net, "").max_distance is not None or any(
        versioned.max_distance is not None for versioned in policy.nets.values()
    ):
        return
    if not missing_sqlite_file(settings.database_url):
        with open_store(settings) as engine, session_scope(engine) as session:
            if calibrated(session, suite=suite, net=net):
                return
    raise GateError(f"--threshold: none given and the policies set no max_distance for suite {suite!r}")
