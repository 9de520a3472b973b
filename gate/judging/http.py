"""The gate daemon's HTTP endpoints, for probes and Prometheus: /healthz (the loop ticks), /readyz
(the store answers) and /metrics. The standard library's threaded server: the light gate gains no web
framework, and a probe or a scrape never waits on the loop, nor the loop on them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from gate.logs import get_logger

log = get_logger("gate.judging.http")


class Probes(Protocol):
    def alive(self) -> bool:
        """The loop ticked recently."""

    def ready(self) -> bool:
        """The store answers."""


def make_server(probes: Probes, *, host: str, port: int) -> ThreadingHTTPServer:
    """Bound (port 0: any free one) but not serving yet."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            if self.path == "/healthz":
                self._answer(*((200, b"ok\n") if probes.alive() else (503, b"not ticking\n")))
            elif self.path == "/readyz":
                self._answer(*((200, b"ok\n") if probes.ready() else (503, b"store unavailable\n")))
            elif self.path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            else:
                self._answer(404, b"not found: /healthz, /readyz or /metrics\n")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (probes would flood the log)
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


@contextmanager
def serving(probes: Probes, address: tuple[str, int] | None) -> Iterator[ThreadingHTTPServer | None]:
    """Serve on `address` (host, port) in a thread for the duration; None serves nothing."""
    if address is None:
        yield None
        return
    server = make_server(probes, host=address[0], port=address[1])
    thread = threading.Thread(target=server.serve_forever, name="gate-http", daemon=True)
    thread.start()
    log.info("gate http listening", host=address[0], port=server.server_port)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
