"""Who may do what, and how much a request may send. Bearer tokens come from Settings as SecretStr
and are compared in constant time; no token is ever logged, echoed or shown.

- Writes need LPIPS_GATE_API_TOKEN: without one configured every write is refused (403: the server
  takes no writes at all); a request without it, or with another, is 401.
- Reads are open unless LPIPS_GATE_API_READ_TOKEN is set; then they need it or the write token (401)."""

from __future__ import annotations

import hmac
import json

from fastapi import HTTPException, Request
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gate.settings import Settings

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(given: str | None, secret: SecretStr | None) -> bool:
    if given is None or secret is None:
        return False
    return hmac.compare_digest(given.encode(), secret.get_secret_value().encode())


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.services.settings
    return settings


def require_write(request: Request) -> None:
    settings = _settings(request)
    if settings.api_token is None:
        raise HTTPException(403, "writes are disabled: the server has no LPIPS_GATE_API_TOKEN")
    if not _matches(_bearer(request), settings.api_token):
        raise HTTPException(401, "a write token is required: Authorization: Bearer <LPIPS_GATE_API_TOKEN>",
                            headers=CHALLENGE)


def require_read(request: Request) -> None:
    settings = _settings(request)
    if settings.api_read_token is None:
        return
    given = _bearer(request)
    if not (_matches(given, settings.api_read_token) or _matches(given, settings.api_token)):
        raise HTTPException(401, "a read token is required: Authorization: Bearer <LPIPS_GATE_API_READ_TOKEN>",
                            headers=CHALLENGE)


class BodyLimit:
    """Refuses a request body over `max_bytes` with 413: by its Content-Length before reading, and
    while reading a body sent without one (bodies are small: it is read whole, then handed on)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        body, more = b"", True
        while more:  # read it all (at most max_bytes) before the app sees any of it
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await _too_large(send, self.max_bytes)
                return
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A receive that hands back `messages`, then waits on `then` (a disconnect) if given."""

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


async def _too_large(send: Send, max_bytes: int) -> None:
    body = json.dumps({"detail": f"request body over {max_bytes} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
