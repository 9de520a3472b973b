"""Running the app on uvicorn, for `lpips-gate serve`. Imported only there: FastAPI and uvicorn come
with lpips-gate[api], and their absence is a GateError that says so."""

from __future__ import annotations

from gate.errors import GateError
from gate.settings import Settings

API_HINT = "pip install 'lpips-gate[api]'"


def run_server(settings: Settings, *, host: str, port: int) -> None:
    """Serve until interrupted; the store is checked first, so a missing or unmigrated one is refused
    with its reason instead of a server that answers 503."""
    try:
        import uvicorn

        from gate.api.app import create_app
    except ImportError as exc:
        raise GateError(f"serve needs the HTTP stack: {API_HINT} ({exc.name} is missing)") from exc
    from gate.logs import configure
    from gate.store.opening import open_store

    configure(settings)
    with open_store(settings):
        pass
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower(),
                server_header=False)
