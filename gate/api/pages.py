"""The dashboard's pages, rendered on the server (Jinja2; gate/api/static/app.js moves the A/B
slider): runs, a run, a suite's trend, alerts, and a pair's images. Reads, so LPIPS_GATE_API_READ_TOKEN
guards them when set."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from gate.alerts.store import alert_views
from gate.api.app import Services
from gate.api.models import Id
from gate.api.plot import trend_plot
from gate.api.security import require_read
from gate.judging.trend import suite_trend
from gate.runs.browse import pair_image, recent_runs, run_page
from gate.store import session_scope
from gate.vocabulary import HEATMAP_SCALE

templates = Jinja2Templates(directory=FilePath(__file__).parent / "templates")
templates.env.globals["heatmap_scale"] = HEATMAP_SCALE  # every heatmap is painted on this one scale
router = APIRouter(dependencies=[Depends(require_read)], include_in_schema=False,
                   default_response_class=HTMLResponse)
SuiteName = Annotated[str, Path(max_length=200, pattern=r"^[^\x00]+$")]
ImageName = Annotated[str, Path(pattern=r"^(ref|cand|heatmap)\.(png|jpg)$")]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/")
def runs_page(request: Request) -> Response:
    with session_scope(_services(request).engine()) as session:
        runs = recent_runs(session, limit=100)
    return templates.TemplateResponse(request, "runs.html", {"runs": runs})


@router.get("/runs/{run_id}")
def run_view_page(run_id: Id, request: Request) -> Response:
    services = _services(request)
    run = run_page(services.engine(), services.settings, run_id)
    return templates.TemplateResponse(request, "run.html", {"run": run})


@router.get("/runs/{run_id}/pairs/{comparison_id}/{name}", response_class=Response)
def image(run_id: Id, comparison_id: Id, name: ImageName, request: Request) -> Response:
    """A pair's reference, candidate or heatmap; its media type from its bytes, whatever the name says."""
    services = _services(request)
    with session_scope(services.engine()) as session:
        data, media = pair_image(session, services.settings, run_id=run_id, comparison_id=comparison_id,
                                 kind=name.partition(".")[0])
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=60"})


@router.get("/suites/{suite}")
def suite_page(suite: SuiteName, request: Request) -> Response:
    with session_scope(_services(request).engine()) as session:
        trend = suite_trend(session, suite=suite)
    return templates.TemplateResponse(request, "suite.html", {"trend": trend, "plot": trend_plot(trend)})


@router.get("/alerts")
def alerts_page(request: Request) -> Response:
    with session_scope(_services(request).engine()) as session:
        shown = alert_views(session)
    return templates.TemplateResponse(request, "alerts.html", {"alerts": shown})
