"""API v1: each route parses, calls one service of gate, and answers in the models of gate.api.models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from gate.alerts.store import alert_views
from gate.api.app import Services
from gate.api.models import (
    AlertOut,
    ApprovalOut,
    ApproveIn,
    Id,
    Problem,
    RunCreated,
    RunIn,
    RunListed,
    RunOut,
    TrendOut,
)
from gate.api.security import require_read, require_write
from gate.judging.trend import suite_trend
from gate.runs.approve import approve_run
from gate.runs.background import accept_run
from gate.runs.browse import existing_run, recent_runs, run_view
from gate.runs.service import RunSpec
from gate.store import session_scope

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": meaning}
    for code, meaning in ((400, "refused input, named"), (401, "no or wrong token"),
                          (403, "writes disabled: no token configured"), (413, "request body too large"),
                          (503, "store or engine unavailable"))
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such id"}}

router = APIRouter(prefix="/api/v1", responses=ERRORS)
Read = [Depends(require_read)]
NO_NUL = r"^[^\x00]+$"  # no database text holds a NUL


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.post("/runs", status_code=201, response_model=RunCreated, dependencies=[Depends(require_write)])
def submit(body: RunIn, request: Request) -> RunCreated:
    """Store a run and start it: computed by the workers with a broker, else in this server's own
    process in the background. Answers at once; GET the run to follow it."""
    services = _services(request)
    spec = RunSpec(body.suite, threshold=body.threshold, net=body.net, maps=body.maps, meta=body.meta,
                   missing=body.missing)
    folders = None if body.ref is None or body.cand is None else (body.ref, body.cand)
    pairs = None if body.pairs is None else [(pair.ref, pair.cand) for pair in body.pairs]
    run_id = accept_run(services.settings, services.engine(), services.dispatch, spec, folders=folders, pairs=pairs)
    services.submitted.inc()
    return RunCreated(run=run_id)


@router.get("/runs", response_model=list[RunListed], dependencies=Read)
def runs(request: Request, suite: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
         limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
    """The newest runs first."""
    with session_scope(_services(request).engine()) as session:
        return recent_runs(session, limit=limit, suite=suite)


@router.get("/runs/{run_id}", response_model=RunOut, responses=NOT_FOUND, dependencies=Read)
def run(run_id: Id, request: Request) -> dict[str, Any]:
    """The run as `check --json` prints it, judged as soon as it has finished (when it records its
    own policy: a threshold or policies; otherwise the gate daemon judges it)."""
    services = _services(request)
    return run_view(services.engine(), services.settings, run_id)


@router.post("/runs/{run_id}/approve", response_model=ApprovalOut, dependencies=[Depends(require_write)],
             responses={**NOT_FOUND, 409: {"model": Problem, "description": "a file changed since the run: "
                                                                             "nothing approved"}})
def approve(run_id: Id, body: ApproveIn, request: Request) -> dict[str, Any]:
    """Promote the finished run's candidates to references, as `lpips-gate approve` does: atomically,
    each file checked against the sha256 the run measured (409 and nothing changed when one differs)."""
    services = _services(request)
    existing_run(services.engine(), run_id)
    return approve_run(services.settings, run_id, only=body.only, by=body.by)


@router.get("/alerts", response_model=list[AlertOut], dependencies=Read)
def alerts(request: Request, suite: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
           state: Literal["open", "resolved"] | None = None) -> list[dict[str, Any]]:
    """The alerts, newest first, each with the run that last raised it."""
    with session_scope(_services(request).engine()) as session:
        return alert_views(session, suite_name=suite, state=state)


@router.get("/suites/{suite}/trend", response_model=TrendOut, responses=NOT_FOUND, dependencies=Read)
def trend(suite: Annotated[str, Path(max_length=200, pattern=NO_NUL)], request: Request) -> dict[str, Any]:
    """Per run: mean and worst distance and verdict; the calibrated thresholds; drift alerts and baseline."""
    with session_scope(_services(request).engine()) as session:
        return suite_trend(session, suite=suite)
