"""`wait` as one service call: wait for a run's comparisons, judge it, read it back. A policy given to
`wait` (--policies, --threshold) becomes the run's own when it records none yet, and judges it as
`check`'s would; a run that already records a policy (its submitter's, or the one a judge used) keeps
it, and a different one given to `wait` is refused: one policy judges a run, whoever looks first.
The policy judges what the workers computed: the scoring options (masks, region size) were fixed at
submission."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from gate.errors import GateError
from gate.judging.policy import PolicySet, SuitePolicies, policy_hash
from gate.judging.verdict import judge_if_possible, run_summary
from gate.runs.service import Progress, poll_until_finished, require_run, submitted_policy, validate_options
from gate.settings import Settings
from gate.store import review, session_scope
from gate.store.opening import open_store


def wait_for_run(settings: Settings, run_id: int, *, timeout: float, policies: PolicySet | None = None,
                 threshold: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The run summary (gate.judging.verdict.run_summary) once every comparison has finished; judged
    when the run records a policy or one is given. GateError for a policy that conflicts with the
    recorded one (before waiting), RunTimedOut when `timeout` passes first."""
    with open_store(settings) as engine:
        _adopt(engine, run_id, policies, threshold)
        poll_until_finished(engine, run_id, timeout=timeout, progress=progress)
        judge_if_possible(engine, run_id=run_id, settings=settings)
        with session_scope(engine) as session:
            return run_summary(session, run_id)


def _adopt(engine: Engine, run_id: int, policies: PolicySet | None, threshold: float | None) -> None:
    with session_scope(engine) as session:
        run = require_run(session, run_id)
        validate_options(run.suite.name, threshold)
        given = submitted_policy(policies, suite=run.suite.name, threshold=threshold, net=run.net)
        if given is None:
            return
        if review.adopt_policy(session, run_id=run_id, policy=given.model_dump(mode="json"), threshold=threshold):
            return
        session.refresh(run)
        assert run.policy is not None  # adopt_policy refuses only a run that records one
        recorded = policy_hash(SuitePolicies.model_validate(run.policy))
        if recorded != policy_hash(given):
            raise GateError(f"run {run_id}: records policy {recorded[:12]}, judged by it; the --policies/--threshold "
                            f"given ({policy_hash(given)[:12]}) differ: give the same or none", run=run_id)
