"""`lpips-gate serve`: the HTTP API and dashboard (service: gate.api.app.run_server)."""

from __future__ import annotations

import click

from gate.settings import Settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, as in a container).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port to listen on.")
@click.pass_obj
def serve(settings: Settings, host: str, port: int) -> None:
    """Serve the HTTP API (/api/v1, OpenAPI at /openapi.json) and the dashboard pages.

    Runs submitted over HTTP are queued for the workers with LPIPS_GATE_BROKER_URL set, else computed
    in this process in the background (needs lpips-gate[worker]). Writes need the bearer token
    LPIPS_GATE_API_TOKEN (refused when none is set); reads need LPIPS_GATE_API_READ_TOKEN when it is
    set. Needs lpips-gate[api]."""
    from gate.api.server import run_server

    run_server(settings, host=host, port=port)
