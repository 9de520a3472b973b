"""`create_app(settings)`: the API (gate.api.v1), the pages (gate.api.pages), health and metrics.
The store is opened on first use and the dispatcher (broker, or the embedded engine in a background
thread) on the first submission, or at start when a stopped server left work queued, so a server
starts without either and says what is missing."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from gate.errors import BrokerUnreachable, EngineMissing, GateError, StoreNotReady
from gate.runs.approve import ApprovalConflict
from gate.runs.background import BackgroundDispatch, resume_queued
from gate.runs.service import Dispatch, make_dispatch
from gate.settings import Settings
from gate.store.opening import connect_store
from gate.store.repository import NotFound

HERE = Path(__file__).parent
log = structlog.get_logger(__name__)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Services:
    """What the routes share: the settings, the store's engine and the dispatcher, each made once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._dispatch: BackgroundDispatch | None = None
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.requests = Counter("lpips_gate_api_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.submitted = Counter("lpips_gate_api_runs_submitted", "Runs submitted over HTTP", registry=self.registry)

    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = connect_store(self.settings)
            return self._engine

    def dispatch(self) -> Dispatch:
        """With a broker, checked before each run is stored; without, the one background thread."""
        if self.settings.broker_url:
            return make_dispatch(self.settings)
        with self._lock:
            if self._dispatch is None:
                self._dispatch = BackgroundDispatch(self.settings)
            return self._dispatch

    def ready(self) -> bool:
        try:
            with self.engine().connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001  (not ready, whatever the reason: the probe says no)
            return False
        return True

    def resume(self) -> None:
        """Hand what a stopped embedded server left queued to this one; a store not there yet is left to /readyz."""
        try:
            resumed = resume_queued(self.settings, self.engine(), self.dispatch)
        except (GateError, SQLAlchemyError) as exc:
            log.warning("resume_skipped", reason=str(exc))
            return
        if resumed:
            log.info("resumed_queued_comparisons", comparisons=resumed)

    def close(self) -> None:
        with self._lock:
            dispatch, engine, self._dispatch, self._engine = self._dispatch, self._engine, None, None
        if dispatch is not None:
            dispatch.close()
        if engine is not None:
            engine.dispose()


def create_app(settings: Settings) -> FastAPI:
    from gate.api.pages import router as pages
    from gate.api.security import BodyLimit
    from gate.api.v1 import router as api_v1

    services = Services(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=services.resume, name="lpips-gate-resume", daemon=True).start()
        yield
        services.close()

    app = FastAPI(title="lpips-gate", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,  # CDN assets
                  description="Submit runs, read verdicts, trends and alerts. Bearer tokens: see the README.")
    app.state.services = services
    app.include_router(api_v1)
    app.include_router(pages)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_probes(app, services)
    _add_error_handlers(app)
    app.middleware("http")(_counted(services))
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    return app


def _counted(services: Services) -> Callable[[Request, Callable[[Request], Awaitable[Response]]],
                                               Awaitable[Response]]:
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        services.requests.labels(route=getattr(route, "path", "unmatched"), method=request.method,
                                 status=str(response.status_code)).inc()
        response.headers.update(SECURITY_HEADERS)
        return response

    return count


def _add_probes(app: FastAPI, services: Services) -> None:
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        ready = services.ready()
        return JSONResponse({"status": "ready" if ready else "store unavailable"}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(services.registry), media_type=CONTENT_TYPE_LATEST)


def _add_error_handlers(app: FastAPI) -> None:
    async def gate_error(_request: Request, exc: Exception) -> JSONResponse:
        unavailable = isinstance(exc, (StoreNotReady, EngineMissing, BrokerUnreachable))
        status = 503 if unavailable else 409 if isinstance(exc, ApprovalConflict) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    async def not_found(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc).strip("'\"")}, status_code=404)

    app.add_exception_handler(GateError, gate_error)
    app.add_exception_handler(NotFound, not_found)
